"""Immutable configuration: explicit arguments, then environment, then defaults."""

from __future__ import annotations

import enum
import os
import ssl
from collections.abc import Mapping
from typing import Any, Final

import attrs

from ._catalogue import TimeoutClass

__all__ = [
    "ENVIRONMENTS",
    "USE_DEFAULT",
    "Settings",
    "Timeouts",
    "UseDefault",
    "resolve_base_url",
]

ENVIRONMENTS: Final[Mapping[str, str]] = {
    "production": "https://entreprise.api.gouv.fr",
    "staging": "https://staging.entreprise.api.gouv.fr",
}


class UseDefault(enum.Enum):
    """Sentinel type: "not passed", as opposed to an explicit ``None``."""

    USE_DEFAULT = enum.auto()

    def __repr__(self) -> str:
        return "USE_DEFAULT"


USE_DEFAULT: Final = UseDefault.USE_DEFAULT


@attrs.frozen
class Timeouts:
    """Per-call-class timeouts, in seconds.

    The server gives up on a provider after 10 s and answers 504; reading for
    a bit longer than that (``json`` = 15 s) turns a slow provider into a
    typed 504 rather than an anonymous timeout followed by a 409 on retry.
    Documents get the DINUM spec's 30 s, downloads 60 s.
    """

    connect: float = 5.0
    json: float = 15.0
    document: float = 30.0
    download: float = 60.0

    def read_for(self, cls: TimeoutClass) -> float:
        """The read timeout for one class of call."""
        if cls is TimeoutClass.DOCUMENT:
            return self.document
        if cls is TimeoutClass.DOWNLOAD:
            return self.download
        return self.json


def resolve_base_url(
    base_url: str | None, environment: str | None, env: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """Pick the base URL and environment name; explicit beats environment beats default."""
    env = os.environ if env is None else env
    name = environment or env.get("API_ENTREPRISE_ENV") or "production"
    name = name.strip().lower()
    if name not in ENVIRONMENTS and not (base_url or env.get("API_ENTREPRISE_BASE_URL")):
        raise ValueError(f"environment: {name!r} is not one of {sorted(ENVIRONMENTS)}")
    url = base_url or env.get("API_ENTREPRISE_BASE_URL") or ENVIRONMENTS[name]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"base_url: {url!r} must start with http:// or https://")
    return url.rstrip("/"), name


def _no_false(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is False:
        raise ValueError("TLS verification cannot be disabled; pass a CA bundle path instead")


@attrs.frozen
class Settings:
    """Everything a client is built from; never mutated, copied by ``evolve``."""

    base_url: str
    environment: str
    recipient: str | None = None
    context: str | None = None
    object: str | None = None
    timeouts: Timeouts = Timeouts()
    max_wait: float | None = None
    user_agent: str = ""
    verify: str | ssl.SSLContext | bool = attrs.field(default=True, validator=_no_false)
    check_maintenance: bool = True
    retry_rate_limited: bool = False
    retry: Any = None
    coalesce: bool = True
    user: str | None = None
    case: str | None = None
    strict: bool = False
