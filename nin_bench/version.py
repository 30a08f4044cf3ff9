"""The package's version, its one owner (pyproject.toml reads it; the manifest records it, installed or not)."""
__version__ = "0.1.0"
