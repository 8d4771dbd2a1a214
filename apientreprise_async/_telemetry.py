"""Counters behind ``client.stats()`` and the optional OpenTelemetry instruments.

Both are fed by the same :class:`~apientreprise_async.audit.AuditRecord` stream
as the audit trail, so the three views of a call can never disagree.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import attrs

from .audit import AuditRecord

__all__ = ["Stats", "StatsCollector", "Telemetry"]


@attrs.frozen
class Stats:
    """A snapshot of what one client (and its ``with_options`` copies) has done.

    Attributes:
        calls: logical calls that reached the network or shared a request.
        attempts: requests sent (a retried call counts each attempt).
        outcomes: attempts by outcome (``ok``, ``http_404``, ``TransportError``...).
        retries: attempts after the first of their call.
        coalesced: calls answered by an identical call in flight.
        refused: calls refused locally (validation, maintenance, governor deadline, circuit).
        rate_limited: 429 answers received.
        governor_waits: attempts that had to wait for the governor.
        governor_wait_total: seconds spent waiting for it, all attempts together.
        governor: the governor's own counters and per-bucket snapshot.
        unfit_answers: 2xx answers returned with ``problems`` (not fitting their record).
        unfit_paths: for each ``"<operation> <JSON path>"`` that did not fit, how many
            answers had it.
    """

    calls: int
    attempts: int
    outcomes: Mapping[str, int]
    retries: int
    coalesced: int
    refused: int
    rate_limited: int
    governor_waits: int
    governor_wait_total: float
    governor: Any = None
    unfit_answers: int = 0
    unfit_paths: Mapping[str, int] = attrs.field(factory=dict)


class StatsCollector:
    """Accumulates audit records into counters."""

    def __init__(self) -> None:
        self.calls = 0
        self.attempts = 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.retries = 0
        self.coalesced = 0
        self.refused = 0
        self.rate_limited = 0
        self.governor_waits = 0
        self.governor_wait_total = 0.0
        self.unfit_answers = 0
        self.unfit_paths: collections.Counter[str] = collections.Counter()

    def add(self, record: AuditRecord) -> None:
        """Count one record."""
        if record.outcome == "refused":
            self.refused += 1
            return
        if record.coalesced:
            self.coalesced += 1
            self.calls += 1
            return
        if record.unfit_paths:
            self.unfit_answers += 1
            self.unfit_paths.update(f"{record.operation_id} {p}" for p in record.unfit_paths)
        self.attempts += 1
        self.outcomes[record.outcome] += 1
        if record.attempt == 1:
            self.calls += 1
        else:
            self.retries += 1
        if record.http_status == 429:
            self.rate_limited += 1
        if record.governor_wait > 0:
            self.governor_waits += 1
            self.governor_wait_total += record.governor_wait

    def snapshot(self, governor: Any = None) -> Stats:
        """Freeze the counters."""
        return Stats(
            calls=self.calls,
            attempts=self.attempts,
            outcomes=dict(self.outcomes),
            retries=self.retries,
            coalesced=self.coalesced,
            refused=self.refused,
            rate_limited=self.rate_limited,
            governor_waits=self.governor_waits,
            governor_wait_total=self.governor_wait_total,
            governor=governor,
            unfit_answers=self.unfit_answers,
            unfit_paths=dict(self.unfit_paths),
        )


class Telemetry:
    """OpenTelemetry spans, counters and histograms; inert when the API is not installed.

    Only the OpenTelemetry *API* is used: nothing is exported unless the
    application configured an SDK, as OpenTelemetry intends for libraries.
    """

    def __init__(self) -> None:
        try:
            from opentelemetry import metrics, trace
        except ImportError:
            self.enabled = False
            return
        from ._version import version

        self.enabled = True
        self._trace = trace
        self._tracer = trace.get_tracer("apientreprise_async", version())
        meter = metrics.get_meter("apientreprise_async", version())
        self._attempts = meter.create_counter(
            "apientreprise.attempts", unit="{attempt}", description="Requests sent or refused"
        )
        self._duration = meter.create_histogram(
            "apientreprise.duration", unit="s", description="Duration of one attempt"
        )
        self._wait = meter.create_histogram(
            "apientreprise.governor.wait", unit="s", description="Wait for the governor"
        )

    def span(self, operation_id: str) -> Any:
        """A span covering one call (a context manager), or ``None`` when disabled."""
        if not self.enabled:
            return None
        if isinstance(self._trace.get_tracer_provider(), self._trace.ProxyTracerProvider):
            # No SDK configured (yet): the span would be a no-op, and costs a fifth
            # of the client's own time per call. Checked per call, so that an SDK
            # configured later is used at once.
            return None
        return self._tracer.start_as_current_span(
            f"API Entreprise {operation_id or 'GET'}",
            attributes={"apientreprise.operation_id": operation_id},
        )

    def record(self, record: AuditRecord, span: Any) -> None:
        """Feed the instruments, and the call's span, from one audit record."""
        if not self.enabled:
            return
        attributes = {"apientreprise.operation_id": record.operation_id, "outcome": record.outcome}
        self._attempts.add(1, attributes)
        if record.outcome != "refused":
            self._duration.record(record.duration, attributes)
            self._wait.record(record.governor_wait, attributes)
        if span is not None:
            span.set_attribute("apientreprise.outcome", record.outcome)
            span.set_attribute("apientreprise.attempts", record.attempt)
            span.set_attribute("apientreprise.governor_wait", record.governor_wait)
            span.set_attribute("apientreprise.coalesced", record.coalesced)
            if record.http_status is not None:
                span.set_attribute("http.response.status_code", record.http_status)
