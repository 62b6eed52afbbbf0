"""The HTTP API: timers in (validation, the section 6 contract), health, OpenAPI at /docs."""
