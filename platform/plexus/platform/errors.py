"""One small error hierarchy: every error says what was wrong and what to do."""

from __future__ import annotations


class PlexusError(Exception):
    """Base of every error Plexus raises on purpose."""


class ConfigError(PlexusError, ValueError):
    """A config file, key or value is wrong; the message names the key."""


class DataError(PlexusError):
    """Input data is missing or malformed; the message names the file and line."""


class RegistryError(PlexusError):
    """The MLflow registry has no such model, version or alias, or a bundle is unusable."""


class MissingDependencyError(PlexusError, ImportError):
    """An optional dependency is not installed; the message gives the pip command."""


def require(module: str, extra: str) -> object:
    """Import `module` or fail with the exact install hint for the `extra` that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module!r} is not installed; install it with: pip install 'plexus[{extra}]'"
        ) from exc
