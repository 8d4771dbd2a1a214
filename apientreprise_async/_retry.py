"""What is retried, how long to wait, and the record of each attempt.

Written here rather than taken from stamina or tenacity: every attempt must go
back through the governor (so it counts against the limits), waits must come
from anyio's clock (so virtual-time tests work on asyncio and trio), and the
server's own hints (``Retry-After``, ``meta.retry_in``) must beat the backoff.
Those three points are most of the code a library would have needed around it.
"""

from __future__ import annotations

import random

import attrs

from ._errors import (
    ApiEntrepriseError,
    ConflictError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
    ServiceUnreachable,
    TransportError,
    _Oversized,
)

__all__ = ["Attempt", "RetryPolicy", "annotate", "describe", "is_transient_502"]

# 502 codes that end in 999 are "unknown provider error": usually a hiccup.
# 04502 means the provider is still processing. Others (invalid file, account
# situation, probable 404) will not change on a retry.
_TRANSIENT_502 = frozenset({"04502"})


def is_transient_502(error: ProviderError) -> bool:
    """Whether a 502 is worth trying again."""
    code = error.first_error_code or ""
    return code.endswith("999") or code in _TRANSIENT_502 or error.retry_in is not None


@attrs.frozen
class Attempt:
    """One failed attempt of a call: its number, what went wrong, and the wait after it."""

    number: int
    error: str
    waited: float

    def __str__(self) -> str:
        tail = f", waited {self.waited:.2f} s" if self.waited else ""
        return f"#{self.number} {self.error}{tail}"


@attrs.frozen
class RetryPolicy:
    """Retry configuration (off unless given to the client, a call or the batch runner).

    Args:
        max_attempts: attempts in all, the first one included.
        base_delay: first backoff ceiling, doubled at each attempt (full jitter below it).
        max_delay: cap of one backoff.
        deadline: seconds a call may take in all, waits included; ``None`` for no cap.
        rate_limited: retry 429s once the governor's pause is over.
        conflicts: retry 409s (another identical request was still running).
        seed: fix the jitter for reproducible tests.
    """

    max_attempts: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    base_delay: float = 0.5
    max_delay: float = 30.0
    deadline: float | None = 120.0
    rate_limited: bool = True
    conflicts: bool = True
    seed: int | None = None
    _rng: random.Random = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_rng", random.Random(self.seed))

    def retryable(self, error: BaseException) -> bool:
        """Whether ``error`` may be retried under this policy."""
        if isinstance(error, ServiceUnreachable | _Oversized):
            return False
        if isinstance(error, RateLimitError):
            return self.rate_limited and not error.local
        if isinstance(error, ConflictError):
            return self.conflicts
        if isinstance(error, ProviderError):
            return is_transient_502(error)
        return isinstance(error, ProviderUnavailableError | TransportError)

    def delay(self, attempt: int, error: BaseException) -> float:
        """Seconds to sleep after failed attempt number ``attempt`` (1-based)."""
        if isinstance(error, RateLimitError):
            # The governor already holds the bucket closed until the server's
            # Retry-After; a retry just queues behind that pause.
            return 0.0
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        wait = self._rng.uniform(0, ceiling)
        hint = getattr(error, "retry_in", None)
        if isinstance(hint, float | int):
            wait = max(wait, float(hint))
        return wait


def describe(error: BaseException) -> str:
    """A short label of a failed attempt for the final error's summary."""
    status = getattr(error, "http_status", None)
    code = getattr(error, "first_error_code", None)
    parts = [type(error).__name__]
    if status:
        parts.append(str(status))
    if code:
        parts.append(str(code))
    return " ".join(parts)


def annotate(error: ApiEntrepriseError, attempts: list[Attempt]) -> None:
    """Attach the attempt history to the error that ends a retried call."""
    error.attempts = tuple(attempts)
    if len(attempts) > 1:
        lines = "; ".join(str(a) for a in attempts)
        error.add_note(f"gave up after {len(attempts)} attempts: {lines}")
