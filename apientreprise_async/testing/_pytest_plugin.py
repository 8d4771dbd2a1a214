"""pytest plugin registered by the package (fixtures are added with the emulator)."""

from __future__ import annotations
