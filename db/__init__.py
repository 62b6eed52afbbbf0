"""The only package that speaks SQL: schema, migrations, queries, partitions, embedded Postgres.

Every other package reaches PostgreSQL through the functions here and gets typed models back.
"""
