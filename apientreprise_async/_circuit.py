"""Stop sending into silence.

A banned IP gets no answer at all from API Entreprise: requests just time
out. After ``threshold`` calls in a row end with no HTTP answer, the circuit
opens: new calls fail at once with :class:`ServiceUnreachable` for a
cool-down, then a single probe call is let through. An answer of any status
closes the circuit; more silence reopens it for twice as long (up to a cap).
"""

from __future__ import annotations

import logging
import time

import anyio
import attrs

from ._errors import ServiceUnreachable

__all__ = ["Circuit", "CircuitPolicy"]

logger = logging.getLogger("apientreprise_async")


@attrs.frozen
class CircuitPolicy:
    """When the circuit opens and how long it stays open.

    Args:
        threshold: consecutive calls without any HTTP answer that open it.
        cooldown: first open period, in seconds.
        max_cooldown: cap of the doubling open period (a ban lasts 12 hours).
    """

    threshold: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    cooldown: float = 60.0
    max_cooldown: float = 3600.0


class Circuit:
    """Counts silent failures across all endpoints of one client and gates new calls."""

    def __init__(self, policy: CircuitPolicy | None = None) -> None:
        self.policy = policy or CircuitPolicy()
        self._silent = 0
        self._open_until: float | None = None
        self._cooldown = self.policy.cooldown
        self._probing = False
        self.opened = 0

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (a probe may go)."""
        if self._open_until is None:
            return "closed"
        if anyio.current_time() < self._open_until or self._probing:
            return "open"
        return "half-open"

    def before_call(self) -> bool:
        """Admit a call or raise :class:`ServiceUnreachable`; true when the call is the probe."""
        if self._open_until is None:
            return False
        now = anyio.current_time()
        if now < self._open_until or self._probing:
            wait = max(0.0, self._open_until - now)
            raise ServiceUnreachable(
                f"API Entreprise has not answered {self._silent} calls in a row; calls are "
                f"suspended (possible IP ban). Next probe in {wait:.0f} s."
            )
        self._probing = True
        return True

    def answered(self, probe: bool) -> None:
        """Any HTTP answer, whatever its status, proves the server is listening."""
        if self._open_until is not None:
            logger.info("API Entreprise answers again; circuit closed", extra={"circuit": "closed"})
        self._silent = 0
        self._open_until = None
        self._cooldown = self.policy.cooldown
        self._probing = False

    def silent(self, probe: bool) -> None:
        """A call got no HTTP answer (timeout, connection failure)."""
        self._silent += 1
        if probe:
            self._probing = False
            self._cooldown = min(self._cooldown * 2, self.policy.max_cooldown)
            self._open(self._cooldown)
        elif self._open_until is None and self._silent >= self.policy.threshold:
            self._open(self._cooldown)

    def released(self, probe: bool) -> None:
        """The probe ended without a verdict (cancelled, refused locally): let another go."""
        if probe:
            self._probing = False

    def _open(self, duration: float) -> None:
        self._open_until = anyio.current_time() + duration
        self.opened += 1
        at = time.strftime("%H:%M:%S", time.localtime(time.time() + duration))
        logger.warning(
            "API Entreprise did not answer %d calls in a row: the IP may be banned (a ban lasts "
            "12 hours and the server then stays silent). New calls fail fast; next probe in "
            "%.0f s (about %s).",
            self._silent,
            duration,
            at,
            extra={"circuit": "open", "silent_calls": self._silent, "next_probe_in": duration},
        )
