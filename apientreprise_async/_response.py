"""The value objects a successful call returns."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import attrs
import httpx

__all__ = ["RateLimit", "Response", "parse_rate_limit"]

T = TypeVar("T")


@attrs.frozen
class RateLimit:
    """The ``RateLimit-*`` headers of one answer.

    ``reset_epoch`` keeps sub-second precision (a scaled test server sends
    decimals); ``reset_at`` is the same instant as an aware UTC datetime.
    """

    limit: int
    remaining: int
    reset_epoch: float

    @property
    def reset_at(self) -> dt.datetime:
        """End of the current window, as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self.reset_epoch, tz=dt.UTC)


def _parse_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimit | None:
    """Read ``RateLimit-Limit/Remaining/Reset``; ``None`` if any is absent or malformed."""
    limit = _parse_float(headers.get("ratelimit-limit"))
    remaining = _parse_float(headers.get("ratelimit-remaining"))
    reset = _parse_float(headers.get("ratelimit-reset"))
    if limit is None or remaining is None or reset is None:
        return None
    if limit < 0 or remaining < 0 or reset < 0:
        return None
    return RateLimit(limit=int(limit), remaining=int(remaining), reset_epoch=reset)


@attrs.frozen
class Response(Generic[T]):
    """One successful answer of the API.

    ``data`` is the typed record when the operation has one, else the parsed
    JSON. ``meta`` and ``links`` are always mappings, empty when absent.
    """

    data: T
    links: Mapping[str, Any]
    meta: Mapping[str, Any]
    raw: Any
    http_status: int
    headers: httpx.Headers
    rate_limit: RateLimit | None
    request_id: str | None = None
    operation_id: str | None = None

    @property
    def cached(self) -> bool | None:
        """``X-Response-Cached``: whether the server answered from its cache."""
        value = self.headers.get("x-response-cached")
        if value is None:
            return None
        return value.strip().lower() in {"true", "1", "yes"}

    @property
    def cache_expires_in(self) -> float | None:
        """``X-Cache-Expires-in``: seconds before the server's cached copy expires."""
        return _parse_float(self.headers.get("x-cache-expires-in"))
