"""The package version: one place, imported by the package and by anything that records it."""

__version__ = "0.1.0"
