"""The package version, on the ground floor so that every module can name it (pyproject.toml holds the same)."""

__version__ = "0.1.0"
