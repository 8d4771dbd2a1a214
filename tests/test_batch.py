"""The batch runner: outcomes, pace, windows, checkpoints, failures (emulator in process)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from trio.testing import MockClock

from apientreprise_async import (
    AsyncClient,
    AuthenticationError,
    Governor,
    Limits,
    MissingParameterError,
    TransportError,
    UnknownOperationError,
)
from apientreprise_async._batch import Batch, parse_window
from apientreprise_async.backends import InMemoryBackend
from apientreprise_async.testing import COMPANIES, Emulator, Faults

from .conftest import RECIPIENT, TOKEN

pytestmark = pytest.mark.anyio

virtual_time = pytest.mark.parametrize(
    "anyio_backend",
    [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-mock")],
)

UL = "api_entreprise_v4_insee_unites_legales"
ETAB = "api_entreprise_v4_insee_etablissements"
KNOWN = [c.siren for c in COMPANIES]
SIRETS = [e.siret for c in COMPANIES for e in c.establishments]
UNKNOWN = "418166096"  # valid checksum, not in the emulator's data
MALFORMED = "12345678X"


def luhn(prefix: str) -> str:
    """``prefix`` completed with its Luhn digit."""
    for digit in "0123456789":
        total = 0
        for position, char in enumerate(reversed(prefix + digit)):
            value = int(char) * (2 if position % 2 else 1)
            total += value - 9 if value > 9 else value
        if total % 10 == 0:
            return prefix + digit
    raise AssertionError


def sirens(count: int) -> list[str]:
    """``count`` distinct valid SIRENs (unknown to the emulator: 404s)."""
    return [luhn(f"{20_000_000 + 7919 * n:08d}") for n in range(count)]


def client_for(emulator: Emulator, limits: Limits | None = None, **kw: Any) -> AsyncClient:
    """A client wired to ``emulator`` with a governor of its own."""
    governor = Governor(limits or Limits(period=emulator.period), backend=InMemoryBackend())
    return AsyncClient(
        TOKEN,
        transport=emulator.transport(),
        governor=governor,
        recipient=RECIPIENT,
        context="tests",
        object="batch",
        **kw,
    )


async def drain(batch: Batch) -> list[Any]:
    """Run a batch to its end and return its outcomes."""
    async with batch as outcomes:
        return [o async for o in outcomes]


def emulator(**kw: Any) -> Emulator:
    """An emulator knowing the test token."""
    emu = Emulator(**kw)
    emu.add_token(TOKEN)
    return emu


async def test_every_input_gets_one_typed_outcome() -> None:
    """Found, not found and malformed inputs each yield exactly one outcome, none dropped."""
    inputs = [*KNOWN, UNKNOWN, MALFORMED, ""]
    async with client_for(emulator(period=1.0)) as client, client.batch(UL, inputs) as outcomes:
        seen = [o async for o in outcomes]
    assert sorted(inputs) == sorted(str(o.input) for o in seen)
    by_input = {o.input: o for o in seen}
    for siren in KNOWN:
        assert "ok" == by_input[siren].status
        assert siren == by_input[siren].record.siren
    assert "not_found" == by_input[UNKNOWN].status
    assert "invalid" == by_input[MALFORMED].status
    assert "invalid" == by_input[""].status
    assert "local_validation" == by_input[MALFORMED].to_json()["error"]["code"]
    assert sorted(range(len(inputs))) == sorted(o.index for o in seen)
    assert {"ok": 5, "not_found": 1, "invalid": 2} == {
        "ok": outcomes.stats.ok,
        "not_found": outcomes.stats.not_found,
        "invalid": outcomes.stats.invalid,
    }


async def test_several_operations_per_input() -> None:
    """Each SIRET is called on both operations; SIREN operations get its first nine digits."""
    async with client_for(emulator(period=1.0)) as client:
        seen = await drain(client.batch([UL, ETAB], SIRETS))
    assert len(SIRETS) * 2 == len(seen)
    assert {(s, op) for s in SIRETS for op in (UL, ETAB)} == {(o.input, o.operation) for o in seen}
    assert all(o.ok for o in seen)
    for outcome in seen:
        if outcome.operation == UL:
            assert str(outcome.input)[:9] == outcome.record.siren


async def test_mapping_inputs_and_params_function() -> None:
    """Mappings are parameters; a params function maps any input to parameters."""
    async with client_for(emulator(period=1.0)) as client:
        async with client.batch(UL, [{"siren": KNOWN[0]}]) as outcomes:
            first = [o async for o in outcomes]
        async with client.batch(
            UL, [("x", KNOWN[1])], params=lambda item, op: {"siren": item[1]}
        ) as outcomes:
            second = [o async for o in outcomes]
    assert ["ok"] == [o.status for o in first + second][:1]
    assert "ok" == second[0].status


async def test_options_are_checked_up_front() -> None:
    """Unknown operations and bad options fail when the batch is built, not mid-run."""
    async with client_for(emulator(period=1.0)) as client:
        with pytest.raises(UnknownOperationError):
            client.batch("no_such_operation", [])
        with pytest.raises(ValueError, match="off_peak"):
            client.batch(UL, [], off_peak="late")
        with pytest.raises(ValueError, match="concurrency"):
            client.batch(UL, [], concurrency=0)
        batch = client.batch(UL, [])
        with pytest.raises(RuntimeError, match="async with"):
            batch.__aiter__()
    assert (dt.time(22), dt.time(6)) == (
        parse_window("22:00-06:00").from_hour,
        parse_window("22:00-06:00").to_hour,
    )


async def test_default_concurrency_follows_the_limits() -> None:
    """Workers: the buckets' limits per period, capped; a 5-per-period endpoint gets 5."""
    async with client_for(emulator(period=1.0)) as client:
        assert 100 == client.batch(UL, []).concurrency
        assert 5 == client.batch("api_entreprise_v4_dgfip_attestations_fiscales", []).concurrency
        assert 3 == client.batch(UL, [], concurrency=3).concurrency


@virtual_time
async def test_throughput_is_the_limit_not_the_latency() -> None:
    """200 calls at 20 per minute with 2 s latency: 10 windows, never 21 in one, no 429."""
    limit = 20
    emu = emulator(
        period=60.0,
        limits={"json_resources_entreprise": limit},
        faults=Faults(latency=2.0),
    )
    limits = Limits(period=60.0, groups={"json_resources_entreprise": limit})
    async with client_for(emu, limits) as client:
        started = anyio.current_time()
        async with client.batch(UL, sirens(200)) as outcomes:
            count = sum([1 async for _ in outcomes])
        elapsed = anyio.current_time() - started
    assert 200 == count
    assert 0 == len(emu.calls(status=429))
    assert limit >= emu.max_calls_in_a_window()
    # 200 calls need 10 windows at best; a slot frees when its window ends.
    assert elapsed <= 10 * 60.0 * 1.01 + 3 * 2.0, elapsed
    assert 0 == outcomes.governor_counters().rate_limited


@virtual_time
async def test_off_peak_window_holds_calls_until_it_opens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Started at 20:00 Paris with a 22:00-06:00 window, the first call leaves two hours later.

    The wait is not silent: one INFO record says what the batch waits for, and until when.
    """
    caplog.set_level(logging.INFO, logger="apientreprise_async.batch")
    origin = dt.datetime(2025, 1, 15, 19, 0, tzinfo=dt.UTC)  # 20:00 in Paris (winter)
    base = anyio.current_time()

    def now() -> dt.datetime:
        return origin + dt.timedelta(seconds=anyio.current_time() - base)

    emu = emulator(period=60.0, start_epoch=origin.timestamp() + 2 * 3600)
    first_at = None
    async with client_for(emu) as client:
        batch = client.batch(UL, KNOWN, off_peak="22:00-06:00", now=now)
        async with batch as outcomes:
            async for outcome in outcomes:
                first_at = first_at or anyio.current_time() - base
                assert outcome.ok
    assert first_at is not None
    assert 2 * 3600 <= first_at < 2 * 3600 + 60
    assert 5 * 2 * 3600 * 0.99 <= outcomes.stats.paused  # five workers, two hours each
    assert outcomes.stats.closed_until is None
    waits = [r.getMessage() for r in caplog.records if r.name == "apientreprise_async.batch"]
    assert ["batch waiting for the off-peak window until 2025-01-15 22:00 (Paris time)"] == waits


@virtual_time
async def test_maintenance_window_is_waited_out() -> None:
    """A call due during DGFIP's 01:00-02:00 maintenance waits for 02:00 instead of failing."""
    op = "api_entreprise_v3_dgfip_chiffres_affaires"
    origin = dt.datetime(2025, 1, 15, 0, 30, tzinfo=dt.UTC)  # 01:30 in Paris
    base = anyio.current_time()

    def now() -> dt.datetime:
        return origin + dt.timedelta(seconds=anyio.current_time() - base)

    emu = emulator(period=60.0, start_epoch=(origin + dt.timedelta(minutes=30)).timestamp())
    async with client_for(emu) as client, client.batch(op, SIRETS[:2], now=now) as outcomes:
        seen = [o async for o in outcomes]
        done_at = anyio.current_time() - base
    assert ["not_found", "not_found"] == [o.status for o in seen]  # answered, not refused
    assert 30 * 60 - 1e-6 <= done_at < 31 * 60  # the shared MockClock: float rounding
    assert "maintenance" not in json.dumps([o.to_json() for o in seen])


@virtual_time
async def test_transient_failures_are_retried() -> None:
    """With 30% of 502/504 answers, every input still ends ok, each attempt governed."""
    emu = emulator(period=60.0, faults=Faults(share_502=0.15, share_504=0.15, retry_in=1.0), seed=3)
    async with client_for(emu) as client, client.batch(UL, KNOWN * 1) as outcomes:
        seen = [o async for o in outcomes]
    assert all(o.ok for o in seen), [o.to_json() for o in seen if not o.ok]
    assert len(emu.requests) >= len(KNOWN)
    assert 0 == len(emu.calls(status=429))


async def test_fatal_error_stops_the_batch_and_is_raised() -> None:
    """An unknown token: the batch stops, raises AuthenticationError, writes no outcome for it."""
    emu = Emulator(period=1.0)  # the test token is not registered
    async with client_for(emu) as client:
        batch = client.batch(UL, KNOWN * 20, concurrency=4)
        with pytest.raises(AuthenticationError):
            await drain(batch)
    assert len(emu.requests) <= 5  # the calls already under way when it stopped, not 100


@virtual_time
async def test_missing_traceability_and_silence_stop_the_batch_without_a_line(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Configuration and a server that never answers are no input's fault: no line, then resume."""
    for name in ("RECIPIENT", "CONTEXT", "OBJECT"):
        monkeypatch.delenv(f"API_ENTREPRISE_{name}", raising=False)
    emu = emulator(period=60.0)
    out = tmp_path / "out.jsonl"
    governor = Governor(Limits(period=60.0), backend=InMemoryBackend())
    async with AsyncClient(TOKEN, transport=emu.transport(), governor=governor) as bare:
        with pytest.raises(MissingParameterError):
            await drain(bare.batch(UL, KNOWN, output=out))
    assert "" == out.read_text("utf-8")
    assert 0 == len(emu.requests)

    def silent(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("nobody listens", request=request)

    governor = Governor(Limits(period=60.0), backend=InMemoryBackend())
    async with AsyncClient(
        TOKEN,
        transport=httpx.MockTransport(silent),
        governor=governor,
        recipient=RECIPIENT,
        context="tests",
        object="batch",
    ) as client:
        with pytest.raises(TransportError):
            await drain(client.batch(UL, KNOWN, output=out))
    assert "" == out.read_text("utf-8")
    async with client_for(emu) as client:  # the server is back: the rerun does them all
        await drain(client.batch(UL, KNOWN, output=out))
    assert sorted(KNOWN) == sorted(json.loads(x)["input"] for x in out.read_text().splitlines())


async def test_checkpoint_resume_skips_done_and_repairs_a_cut_line(tmp_path: pathlib.Path) -> None:
    """A rerun skips the inputs in the output; a line cut by kill -9 is dropped and redone."""
    out = tmp_path / "out.jsonl"
    async with client_for(emulator(period=1.0)) as client:
        async with client.batch(UL, KNOWN[:3], output=out) as outcomes:
            assert 3 == sum([1 async for _ in outcomes])
        with out.open("ab") as broken:
            broken.write(b'{"input":"' + KNOWN[3].encode() + b'","operat')
        async with client.batch(UL, [*KNOWN, UNKNOWN], output=out) as outcomes:
            again = [o async for o in outcomes]
    assert 3 == outcomes.stats.resumed
    assert 3 == outcomes.stats.skipped
    assert {KNOWN[3], KNOWN[4], UNKNOWN} == {o.input for o in again}
    lines = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert sorted([*KNOWN, UNKNOWN]) == sorted(line["input"] for line in lines)
    assert out.read_bytes().endswith(b"\n")


async def test_duplicates_give_one_line_per_occurrence_in_a_fresh_run(
    tmp_path: pathlib.Path,
) -> None:
    """An input listed three times is called three times and written three times."""
    out = tmp_path / "out.jsonl"
    inputs = [KNOWN[0], UNKNOWN, KNOWN[0], MALFORMED, KNOWN[0], UNKNOWN, MALFORMED]
    emu = emulator(period=1.0)
    async with client_for(emu) as client:
        seen = await drain(client.batch([UL, ETAB], inputs, output=out))
    assert len(inputs) * 2 == len(seen)
    lines = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    expected = sorted((i, s, op) for i, s in enumerate(inputs) for op in (UL, ETAB))
    assert expected == sorted((line["index"], line["input"], line["operation"]) for line in lines)
    # Malformed ones never leave; UL is called for each of the five others.
    assert 5 == sum(1 for r in emu.requests if r.operation_id == UL)


async def test_resume_with_duplicates_completes_to_one_line_per_occurrence(
    tmp_path: pathlib.Path,
) -> None:
    """A partial output counts occurrences: each line written accounts for one, not all."""
    out = tmp_path / "out.jsonl"
    inputs = [KNOWN[0], KNOWN[1], KNOWN[0], UNKNOWN, KNOWN[0], KNOWN[1], UNKNOWN]
    async with client_for(emulator(period=1.0)) as client:
        # As if killed after three outcomes: KNOWN[0] twice, KNOWN[1] once.
        async with client.batch(UL, inputs[:3], output=out) as outcomes:
            assert 3 == sum([1 async for _ in outcomes])
        with out.open("ab") as broken:
            broken.write(b'{"input":"' + UNKNOWN.encode() + b'","operat')  # cut by kill -9
        async with client.batch(UL, inputs, output=out) as outcomes:
            again = [o async for o in outcomes]
        assert 3 == outcomes.stats.resumed
        assert 3 == outcomes.stats.skipped
        assert [3, 4, 5, 6] == sorted(o.index for o in again)
        # A third run over the same inputs has nothing left to do.
        async with client.batch(UL, inputs, output=out) as outcomes:
            assert [] == [o async for o in outcomes]
        assert len(inputs) == outcomes.stats.skipped
    lines = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert sorted(enumerate(inputs)) == sorted((line["index"], line["input"]) for line in lines)


async def test_an_output_that_is_not_ours_is_refused(tmp_path: pathlib.Path) -> None:
    """A complete line that is not an outcome stops the batch before any call."""
    out = tmp_path / "out.jsonl"
    out.write_text("hello\n", "utf-8")
    async with client_for(emulator(period=1.0)) as client:
        with pytest.raises(ValueError, match="line 1"):
            async with client.batch(UL, KNOWN, output=out):
                pass


async def test_break_stops_the_workers_and_keeps_the_file_exact(tmp_path: pathlib.Path) -> None:
    """Leaving early cancels the rest; the file holds exactly the outcomes handed out."""
    out = tmp_path / "out.jsonl"
    handed: list[str] = []
    async with client_for(emulator(period=1.0)) as client:
        batch = client.batch(UL, sirens(50), output=out, concurrency=4)
        async with batch as outcomes:
            async for outcome in outcomes:
                handed.append(str(outcome.input))
                if len(handed) == 3:
                    break
    written = [json.loads(line)["input"] for line in out.read_text("utf-8").splitlines()]
    assert handed == written


class _FastClient:
    """Just enough of AsyncClient for the batch runner, answering at once."""

    def __init__(self) -> None:
        self.governor = Governor(Limits(period=1.0), backend=InMemoryBackend())
        self.calls = 0
        request = httpx.Request("GET", "https://example.invalid/")
        self.response = httpx.Response(200, json={"data": {}}, request=request)

    def with_options(self, **_: Any) -> _FastClient:
        return self

    async def call(self, operation: str, **params: Any) -> Any:
        self.calls += 1
        await anyio.lowlevel.checkpoint()
        return _Answer


class _Answer:
    raw: dict[str, Any] = {"data": {}}  # noqa: RUF012 - a constant for the fake
    http_status = 200
    request_id = None
    data = None
    problems = ()


async def test_inputs_are_read_lazily_with_backpressure() -> None:
    """A slow reader holds the feeder back: inputs read run ahead by a bounded amount only."""
    pulled = 0

    async def endless() -> AsyncIterator[str]:
        nonlocal pulled
        while True:
            pulled += 1
            yield f"{pulled:09d}"

    fake = _FastClient()
    batch = Batch(fake, UL, endless(), concurrency=4)  # type: ignore[arg-type]
    async with batch as outcomes:
        read = 0
        async for _ in outcomes:
            read += 1
            await anyio.sleep(0.001)
            if read == 50:
                break
    # Buffers: 4 jobs queued, 4 in the workers, 4 outcomes queued, one in the feeder's hand.
    assert pulled - read <= 4 * 3 + 2, pulled
