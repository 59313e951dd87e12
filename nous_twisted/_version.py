"""The package version, apart so that low modules can read it without a cycle."""

__version__ = "0.1.0"
