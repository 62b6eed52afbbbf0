"""The ``timerhook`` command."""
