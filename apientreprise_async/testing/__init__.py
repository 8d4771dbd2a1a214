"""Test kit for users of the library: an in-process API Entreprise emulator."""

from __future__ import annotations

__all__: list[str] = []
