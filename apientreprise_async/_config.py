"""Immutable configuration: explicit arguments, then environment, then defaults."""

from __future__ import annotations

import enum
import ipaddress
import os
import ssl
from collections.abc import Mapping
from typing import Any, Final

import attrs
import httpx

from ._catalogue import TimeoutClass
from ._errors import InvalidParameterError

__all__ = [
    "ENVIRONMENTS",
    "USE_DEFAULT",
    "Settings",
    "SizeLimits",
    "Timeouts",
    "UseDefault",
    "check_tls",
    "is_loopback",
    "origin",
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
    #: Seconds one attempt may last from connecting to the answer's last byte;
    #: ``None``: the connect timeout plus twice the read timeout. The read
    #: timeout bounds each wait for a byte, this bounds the whole answer (a
    #: server sending a byte a second never trips the read timeout).
    total: float | None = None

    def read_for(self, cls: TimeoutClass) -> float:
        """The read timeout for one class of call."""
        if cls is TimeoutClass.DOCUMENT:
            return self.document
        if cls is TimeoutClass.DOWNLOAD:
            return self.download
        return self.json

    def __attrs_post_init__(self) -> None:
        for name in ("connect", "json", "document", "download", "total"):
            value = getattr(self, name)
            if value is None and name == "total":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"Timeouts.{name}: a positive number of seconds, not {value!r}")

    def total_for(self, read: float) -> float:
        """How long one attempt may take in all, for a read timeout of ``read``."""
        if self.total is not None:
            return self.total
        return self.connect + 2 * read


@attrs.frozen
class SizeLimits:
    """Largest answer accepted per class of call, in bytes (decoded).

    An answer announcing more (``Content-Length``) is refused before its body
    is read; one growing past the limit is cut there, so memory stays bounded
    whatever the server sends. API Entreprise's JSON answers weigh kilobytes.

    .. versionadded:: 0.2.0
    """

    json: int = 10 * 2**20
    document: int = 50 * 2**20
    download: int = 500 * 2**20

    def __attrs_post_init__(self) -> None:
        for name in ("json", "document", "download"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SizeLimits.{name}: a positive number of bytes, not {value!r}")

    def for_class(self, cls: TimeoutClass) -> int:
        """The size limit for one class of call."""
        if cls is TimeoutClass.DOCUMENT:
            return self.document
        if cls is TimeoutClass.DOWNLOAD:
            return self.download
        return self.json


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin(url: str) -> tuple[str, str, int]:
    """Scheme, host and port of ``url``, the port made explicit."""
    parsed = httpx.URL(url)
    scheme = parsed.scheme.lower()
    port = parsed.port if parsed.port is not None else (443 if scheme == "https" else 80)
    return scheme, parsed.host.lower(), port


def check_tls(verify: Any) -> None:
    """Refuse a ``verify`` that would turn certificate checks off.

    Raises:
        InvalidParameterError: ``False``, or an ``SSLContext`` not requiring a certificate
            matching the host name.
    """
    if verify is False:
        raise InvalidParameterError(
            "verify", "TLS verification cannot be disabled; pass a CA bundle path instead"
        )
    if isinstance(verify, ssl.SSLContext) and (
        verify.verify_mode != ssl.CERT_REQUIRED or not verify.check_hostname
    ):
        raise InvalidParameterError(
            "verify",
            "TLS verification cannot be disabled: this SSLContext does not check certificates "
            "(verify_mode CERT_REQUIRED and check_hostname True are required); build it with "
            "ssl.create_default_context(cafile=...) instead",
        )


def resolve_base_url(
    base_url: str | None, environment: str | None, env: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """Pick the base URL and environment name; explicit beats environment beats default."""
    env = os.environ if env is None else env
    name = environment or env.get("API_ENTREPRISE_ENV") or "production"
    name = name.strip().lower()
    if name not in ENVIRONMENTS and not (base_url or env.get("API_ENTREPRISE_BASE_URL")):
        raise ValueError(f"environment must be one of {sorted(ENVIRONMENTS)}; got {name!r}")
    url = base_url or env.get("API_ENTREPRISE_BASE_URL") or ENVIRONMENTS[name]
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"base_url: {url!r} must start with http:// or https://")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise InvalidParameterError("base_url", f"{url!r} is not a URL") from None
    if not parsed.host or parsed.userinfo or parsed.query or parsed.fragment:
        raise InvalidParameterError(
            "base_url", f"{url!r} must be scheme://host[:port][/path], nothing more"
        )
    if parsed.scheme == "http" and not is_loopback(parsed.host):
        # The token would travel in clear; only a local emulator may be plain http.
        raise InvalidParameterError(
            "base_url",
            f"{url!r} is plain http; the token is only sent over https, "
            "or to a loopback address (an emulator on 127.0.0.1 or localhost)",
        )
    return url.rstrip("/"), name


def _no_false(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_tls(value)


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
    sizes: SizeLimits = SizeLimits()
