"""The installed version, read from package metadata on demand."""

from __future__ import annotations

import functools
from importlib import metadata

__all__ = ["version"]


@functools.cache
def version() -> str:
    """This package's version string."""
    try:
        return metadata.version("apientreprise_async")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"
