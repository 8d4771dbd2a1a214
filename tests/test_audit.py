"""Audit trail, stats, structured logs and OpenTelemetry spans."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import threading
from typing import Any

import anyio
import pytest

from apientreprise_async import (
    ApiEntrepriseError,
    AsyncClient,
    InvalidSirenError,
    NotFoundError,
)
from apientreprise_async._retry import RetryPolicy
from apientreprise_async.audit import (
    AuditError,
    AuditRecord,
    JsonLinesAuditSink,
    LoggingAuditSink,
)
from apientreprise_async.testing import COMPANIES, Emulator, Faults

from .conftest import RECIPIENT, TOKEN

pytestmark = pytest.mark.anyio

OP = "api_entreprise_v4_insee_unites_legales"
SIRENS = [c.siren for c in COMPANIES]
# A fixed wall clock (mid-window, a weekday morning in Paris): runs do not depend on when
# the suite starts, nor on the maintenance windows of the day.
START = 1_800_000_000.0 + 17.0
UNKNOWN_SIREN = "418166096"  # valid checksum, not in the emulator's data: 404


@pytest.fixture
def anyio_backend() -> Any:
    """Virtual time: trio with an autojumping clock."""
    from trio.testing import MockClock

    return ("trio", {"clock": MockClock(autojump_threshold=0)})


def record(**kw: Any) -> AuditRecord:
    import datetime as dt

    base: dict[str, Any] = {
        "timestamp": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "operation_id": OP,
        "entity_id": SIRENS[0],
        "context": "ctx",
        "recipient": RECIPIENT,
        "object": "obj",
        "outcome": "ok",
    }
    base.update(kw)
    return AuditRecord(**base)


def test_jsonl_sink_survives_rotation(tmp_path: pathlib.Path) -> None:
    """After the file is moved away (logrotate), the next record goes to a new file."""
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesAuditSink(path)
    sink(record(object="before"))
    os.rename(path, tmp_path / "audit.jsonl.1")
    sink(record(object="after"))
    (tmp_path / "audit.jsonl.1").rename(tmp_path / "audit.jsonl.2")
    path.unlink()
    sink(record(object="after-delete"))
    sink.close()
    assert ["before"] == [
        json.loads(x)["object"] for x in (tmp_path / "audit.jsonl.2").read_text().splitlines()
    ]
    assert ["after-delete"] == [json.loads(x)["object"] for x in path.read_text().splitlines()]


def test_jsonl_sink_concurrent_writers(tmp_path: pathlib.Path) -> None:
    """Eight threads writing 500 records each give 4,000 whole lines."""
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesAuditSink(path)

    def write(n: int) -> None:
        for i in range(500):
            sink(record(object=f"{n}-{i}", user="x" * 200))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    lines = path.read_text().splitlines()
    assert 4000 == len(lines)
    assert 4000 == len({json.loads(line)["object"] for line in lines})


async def test_one_record_per_attempt_over_1000_calls(tmp_path: pathlib.Path) -> None:
    """1,000 calls (with retries, 404s, coalesced and refused ones) leave exactly the right trail."""
    emulator = Emulator(faults=Faults(share_502=0.1, retry_in=1.0), seed=4, start_epoch=START)
    emulator.add_token(TOKEN)
    path = tmp_path / "trail.jsonl"
    sink = JsonLinesAuditSink(path)
    async with AsyncClient(
        token=TOKEN,
        transport=emulator.transport(),
        base_url="https://emulator.test",
        recipient=RECIPIENT,
        context="audit",
        object="base",
        audit=sink,
        retry=RetryPolicy(max_attempts=3, deadline=None, seed=9),
        user="agent-7",
    ) as client:
        outcomes: dict[str, str] = {}

        async def one(i: int) -> None:
            siren = UNKNOWN_SIREN if i % 10 == 0 else SIRENS[i % 5]
            try:
                await client.call(OP, siren=siren, object=f"d{i}", case=f"case-{i}")
                outcomes[f"d{i}"] = "ok"
            except ApiEntrepriseError as exc:
                outcomes[f"d{i}"] = type(exc).__name__

        async with anyio.create_task_group() as tg:
            for i in range(1000):
                tg.start_soon(one, i)
        with pytest.raises(InvalidSirenError):
            await client.call(OP, siren="123456789", object="bad")
        stats = client.stats()
    sink.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    sent = [x for x in lines if x["outcome"] != "refused"]
    assert len(emulator.requests) == len(sent)  # one record per attempt that reached the server
    assert {r.request_id for r in emulator.requests} == {x["request_id"] for x in sent}
    refused = [x for x in lines if x["outcome"] == "refused"]
    assert 1 == len(refused)
    assert ["InvalidSirenError"] == refused[0]["error_codes"]
    by_object: dict[str, list[dict[str, Any]]] = {}
    for x in sent:
        by_object.setdefault(x["object"], []).append(x)
    assert 1000 == len(by_object)
    for obj, attempts in by_object.items():
        numbers = sorted(a["attempt"] for a in attempts)
        assert list(range(1, len(numbers) + 1)) == numbers
        last = max(attempts, key=lambda a: a["attempt"])
        expected = {"ok": "ok", "NotFoundError": "http_404", "ProviderError": "http_502"}[
            outcomes[obj]
        ]
        assert expected == last["outcome"]
        assert "agent-7" == last["user"]
        assert f"case-{obj[1:]}" == last["case"]
        assert "audit" == last["context"]
        assert RECIPIENT == last["recipient"]
        assert last["governor_wait"] >= 0
        assert last["duration"] >= 0
    assert all("token" not in json.dumps(x) and TOKEN not in json.dumps(x) for x in lines)
    assert stats.calls == 1000
    assert stats.attempts == len(sent)
    assert stats.retries == len(sent) - 1000
    assert stats.refused == 1
    assert stats.outcomes.get("http_404", 0) >= 90  # 100 unknown SIRENs, a few hit 502s first
    assert stats.rate_limited == 0
    assert stats.governor_waits > 0  # 1,000 calls need four windows of 250


async def test_coalesced_calls_have_their_own_record() -> None:
    """A call that shared another's request is audited, marked as coalesced."""
    emulator = Emulator(faults=Faults(latency=0.2), start_epoch=START)
    emulator.add_token(TOKEN)
    kept: list[AuditRecord] = []
    async with (
        AsyncClient(
            token=TOKEN,
            transport=emulator.transport(),
            base_url="https://emulator.test",
            recipient=RECIPIENT,
            context="c",
            object="o",
            audit=kept.append,
        ) as client,
        anyio.create_task_group() as tg,
    ):
        for _ in range(3):
            tg.start_soon(lambda: client.call(OP, siren=SIRENS[0]))
    assert 3 == len(kept)
    assert [False, True, True] == sorted(r.coalesced for r in kept)
    assert {"ok"} == {r.outcome for r in kept}


async def test_a_failing_sink_fails_the_call_by_default(caplog: pytest.LogCaptureFixture) -> None:
    """An unaudited access is a compliance failure: raise by default, or log when asked."""
    emulator = Emulator(start_epoch=START)
    emulator.add_token(TOKEN)

    def broken(record: AuditRecord) -> None:
        raise OSError("disk full")

    common: dict[str, Any] = {
        "token": TOKEN,
        "transport": emulator.transport(),
        "base_url": "https://emulator.test",
        "recipient": RECIPIENT,
        "context": "c",
        "object": "o",
        "audit": broken,
    }
    async with AsyncClient(**common) as client:
        with pytest.raises(AuditError, match="disk full"):
            await client.call(OP, siren=SIRENS[0])
    caplog.set_level(logging.ERROR, logger="apientreprise_async")
    async with AsyncClient(**common, audit_errors="log") as client:
        response = await client.call(OP, siren=SIRENS[0])
    assert 200 == response.http_status
    assert any("audit sink failed" in r.getMessage() for r in caplog.records)


async def test_logging_sink_and_structured_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """The logging sink puts the record in `extra`; a 404 is logged with its fields."""
    caplog.set_level(logging.DEBUG)
    emulator = Emulator(start_epoch=START)
    emulator.add_token(TOKEN)
    async with AsyncClient(
        token=TOKEN,
        transport=emulator.transport(),
        base_url="https://emulator.test",
        recipient=RECIPIENT,
        context="c",
        object="o",
        audit=LoggingAuditSink(),
    ) as client:
        with pytest.raises(NotFoundError):
            await client.call(OP, siren=UNKNOWN_SIREN)
    audit = [r for r in caplog.records if r.name == "apientreprise_async.audit"]
    assert 1 == len(audit)
    assert "http_404" == audit[0].audit["outcome"]  # type: ignore[attr-defined]
    requests = [r for r in caplog.records if getattr(r, "http_status", None) == 404]
    assert requests
    for r in caplog.records:
        assert TOKEN not in r.getMessage()


async def test_opentelemetry_spans_and_metrics() -> None:
    """One span per call with operation, outcome and governor wait; metrics recorded."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    # The tracer provider is set once per process: another test may have set it first.
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    emulator = Emulator(start_epoch=START)
    emulator.add_token(TOKEN)
    async with AsyncClient(
        token=TOKEN,
        transport=emulator.transport(),
        base_url="https://emulator.test",
        recipient=RECIPIENT,
        context="c",
        object="o",
    ) as client:
        await client.call(OP, siren=SIRENS[0])
        with pytest.raises(NotFoundError):
            await client.call(OP, siren=UNKNOWN_SIREN)
    spans = exporter.get_finished_spans()
    assert 2 == len(spans)
    attrs = [dict(s.attributes or {}) for s in spans]
    assert {OP} == {a["apientreprise.operation_id"] for a in attrs}
    assert ["http_404", "ok"] == sorted(str(a["apientreprise.outcome"]) for a in attrs)
    assert all("apientreprise.governor_wait" in a for a in attrs)
    data = reader.get_metrics_data()
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {
        "apientreprise.attempts",
        "apientreprise.duration",
        "apientreprise.governor.wait",
    } <= names
