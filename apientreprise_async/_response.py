"""The value objects a successful call returns."""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Mapping
from typing import Any, Generic, NamedTuple, TypeVar

import attrs
import httpx

__all__ = ["RateLimit", "Response", "parse_rate_limit", "parse_window"]

T = TypeVar("T")


@attrs.frozen(init=False)
class RateLimit:
    """The ``RateLimit-*`` headers of one answer, each ``None`` when absent or malformed.

    ``reset_epoch`` keeps sub-second precision (a scaled test server sends
    decimals); ``reset_at`` is the same instant as an aware UTC datetime. To
    build one, give the reset either way: ``RateLimit(250, 0, reset_at=when)``
    (DINUM §7.1's field) equals ``RateLimit(250, 0, when.timestamp())``; a
    naive datetime is read as UTC, the API's epochs being UTC.
    """

    limit: int | None
    remaining: int | None
    reset_epoch: float | None

    def __init__(
        self,
        limit: int | None = None,
        remaining: int | None = None,
        reset_epoch: float | None = None,
        *,
        reset_at: dt.datetime | None = None,
    ) -> None:
        if reset_at is not None:
            if reset_epoch is not None:
                raise TypeError("give reset_epoch or reset_at, not both")
            if reset_at.tzinfo is None:
                reset_at = reset_at.replace(tzinfo=dt.UTC)
            reset_epoch = reset_at.timestamp()
        self.__attrs_init__(limit, remaining, reset_epoch)

    def retry_after(self, now: float | None = None) -> float | None:
        """Seconds from ``now`` (epoch, default the wall clock) to the reset, never negative.

        ``None`` when ``RateLimit-Reset`` was absent or malformed.
        """
        if self.reset_epoch is None:
            return None
        return max(0.0, self.reset_epoch - (time.time() if now is None else now))

    @property
    def reset_at(self) -> dt.datetime | None:
        """End of the current window, as an aware UTC datetime (``None`` if unknown)."""
        if self.reset_epoch is None:
            return None
        try:
            return dt.datetime.fromtimestamp(self.reset_epoch, tz=dt.UTC)
        except (OverflowError, OSError, ValueError):
            return None


class _Window(NamedTuple):
    """All three headers, what the governor needs to learn a window."""

    limit: int
    remaining: int
    reset_epoch: float


def _parse_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _count(value: str | None) -> float | None:
    number = _parse_float(value)
    return None if number is None or number < 0 else number


def _lower(headers: Mapping[str, str]) -> Mapping[str, str]:
    # httpx.Headers ignores case already; a plain mapping from a caller may not.
    if isinstance(headers, httpx.Headers):
        return headers
    return {str(key).lower(): value for key, value in headers.items()}


def _fields(headers: Mapping[str, str]) -> tuple[float | None, float | None, float | None]:
    """``RateLimit-Limit``, ``-Remaining`` and ``-Reset``, each ``None`` when unusable."""
    headers = _lower(headers)
    return (
        _count(headers.get("ratelimit-limit")),
        _count(headers.get("ratelimit-remaining")),
        _count(headers.get("ratelimit-reset")),
    )


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimit | None:
    """Read whichever ``RateLimit-*`` headers are usable; ``None`` when none is."""
    limit, remaining, reset = _fields(headers)
    if limit is None and remaining is None and reset is None:
        return None
    return RateLimit(
        limit=None if limit is None else int(limit),
        remaining=None if remaining is None else int(remaining),
        reset_epoch=reset,
    )


def parse_window(headers: Mapping[str, str]) -> _Window | None:
    """All three ``RateLimit-*`` headers, or ``None`` if any is absent or malformed."""
    limit, remaining, reset = _fields(headers)
    if limit is None or remaining is None or reset is None:
        return None
    return _Window(int(limit), int(remaining), reset)


@attrs.frozen
class Response(Generic[T]):
    """One successful answer of the API.

    ``data`` is the typed record when the operation has one, else the parsed
    JSON. ``meta`` and ``links`` are always mappings, empty when absent.
    ``raw`` is the whole JSON body, exactly as received.

    ``problems`` has one readable line per JSON path of ``data`` whose value
    did not fit the documented type, naming the path and why (empty when
    everything fit). Such values are kept in the ``unfit`` mapping of the
    record holding them; reading their attribute raises
    :class:`~apientreprise_async.UnfitFieldError`.

    .. versionchanged:: 0.2.0 ``problems``.
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
    problems: tuple[str, ...] = ()

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
