"""The package version, read by ``pyproject.toml`` (the single source of truth)."""

__version__ = "0.1.0"
