"""Hostile servers on a real loopback socket: dribbling, oversized, broken answers.

Each server is a few lines of anyio on 127.0.0.1, started by the test in its
own event loop, so the client's real httpx/httpcore stack (sockets, h11,
timeouts) does the reading. Times are scaled down: read timeouts of 0.15 s,
a byte every 20 ms.
"""

from __future__ import annotations

import gc
import pathlib
import traceback
import tracemalloc
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from apientreprise_async import (
    AsyncClient,
    Governor,
    Limits,
    SizeLimits,
    Timeouts,
    TransportError,
)
from apientreprise_async._catalogue import GROUP_LIMITS
from apientreprise_async.backends import InMemoryBackend

from .conftest import RECIPIENT, TOKEN

pytestmark = pytest.mark.anyio

UL_PATH = "/v4/insee/sirene/unites_legales/418166096"
FAST = Limits(groups=dict.fromkeys(GROUP_LIMITS, 1000), period=1.0)
Handler = Callable[[anyio.abc.SocketStream], Awaitable[None]]
DROPPED = (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError, OSError)


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    """Serve ``handler`` on 127.0.0.1 (any free port) for the body of the block."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def guarded(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            with suppress(DROPPED):
                await handler(stream)

    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, guarded)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            group.cancel_scope.cancel()
    await listener.aclose()


async def read_request(stream: anyio.abc.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    return data


def client_for(url: str, **kw: Any) -> AsyncClient:
    kw.setdefault("timeouts", Timeouts(connect=0.2, json=0.15, document=0.15, download=0.15))
    return AsyncClient(
        TOKEN,
        base_url=url,
        governor=Governor(FAST, backend=InMemoryBackend()),
        recipient=RECIPIENT,
        context="tests",
        object="case-1",
        **kw,
    )


def in_flight(client: AsyncClient) -> int:
    return sum(b.in_flight for b in client.governor.snapshot().buckets.values())


# -- a server sending one byte at a time ---------------------------------------------------


class Dribbler:
    """Headers at once, then one byte every ``pace`` seconds, never reaching the end."""

    def __init__(self, content_type: str = "application/json", pace: float = 0.02) -> None:
        self.content_type = content_type
        self.pace = pace
        self.sent = 0
        self.dropped = anyio.Event()

    async def __call__(self, stream: anyio.abc.SocketStream) -> None:
        await read_request(stream)
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: {self.content_type}\r\nContent-Length: 5000\r\n\r\n"
        )
        await stream.send(head.encode())
        try:
            for _ in range(5000):
                await stream.send(b" ")
                self.sent += 1
                await anyio.sleep(self.pace)
        except DROPPED:
            self.dropped.set()
            raise


async def test_a_dribbling_answer_ends_at_the_attempt_deadline_and_frees_the_slot() -> None:
    """Each byte comes before the 0.15 s read timeout; the 0.5 s total deadline ends the call."""
    dribbler = Dribbler()
    async with serving(dribbler) as url, client_for(url) as client:
        started = anyio.current_time()
        with pytest.raises(TransportError, match="deadline of an attempt") as info:
            await client.get(UL_PATH)
        took = anyio.current_time() - started
        assert 0 == in_flight(client)
        with anyio.fail_after(2):
            await dribbler.dropped.wait()  # the client hung up: nothing keeps reading
    # 5,000 bytes at 20 ms would take 100 s; the attempt lasted connect + 2 x read.
    assert took < 2.0
    assert dribbler.sent < 100
    assert type(info.value) is TransportError


async def test_the_total_deadline_is_configurable() -> None:
    dribbler = Dribbler()
    timeouts = Timeouts(connect=0.2, json=0.15, total=0.25)
    async with serving(dribbler) as url, client_for(url, timeouts=timeouts) as client:
        with pytest.raises(TransportError, match=r"0\.2 s deadline"):
            await client.get(UL_PATH)


async def test_a_dribbling_download_ends_at_its_deadline_and_writes_nothing(
    tmp_path: pathlib.Path,
) -> None:
    dribbler = Dribbler("application/pdf")
    async with serving(dribbler) as url, client_for(url) as client:
        with pytest.raises(TransportError, match="deadline"):
            await client.download(f"{url}/files/a.pdf", tmp_path / "a.pdf")
        assert 0 == in_flight(client)
    assert [] == [p async for p in anyio.Path(tmp_path).iterdir()]


# -- a server sending too much ----------------------------------------------------------------


class Flood:
    """An answer of ``total`` bytes (announced or not), in 64 KiB chunks, as fast as it goes."""

    def __init__(self, total: int, *, announce: bool, content_type: str = "application/json"):
        self.total = total
        self.announce = announce
        self.content_type = content_type
        self.sent = 0

    async def __call__(self, stream: anyio.abc.SocketStream) -> None:
        await read_request(stream)
        length = f"Content-Length: {self.total}\r\n" if self.announce else "Connection: close\r\n"
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {self.content_type}\r\n{length}\r\n"
        await stream.send(head.encode())
        chunk = b"[" + b"0," * (2**15 - 1)
        while self.sent < self.total:
            await stream.send(chunk)
            self.sent += len(chunk)


async def test_a_stopped_download_leaves_nothing_for_the_garbage_collector(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk mid-download (an error in the reading loop, not on the network) and a
    deadline: httpx's and httpcore's generators end with the call. None is left for the
    collector, which under trio warns, an error in a test run with warnings as errors."""

    async def full(self: object, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flood = Flood(2**20, announce=True, content_type="application/pdf")
        async with serving(flood) as url, client_for(url) as client:
            with monkeypatch.context() as patched:
                patched.setattr(anyio.AsyncFile, "write", full)
                with pytest.raises(OSError, match="No space left"):
                    await client.download(f"{url}/files/a.pdf", tmp_path / "a.pdf")
        async with serving(Dribbler("application/pdf")) as url, client_for(url) as client:
            with pytest.raises(TransportError, match="deadline"):
                await client.download(f"{url}/files/b.pdf", tmp_path / "b.pdf")
        gc.collect()
        await anyio.lowlevel.checkpoint()  # finalizers the collection scheduled
    assert [] == [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert [] == [p async for p in anyio.Path(tmp_path).iterdir()]


async def test_a_huge_streamed_answer_is_cut_at_the_limit_in_bounded_memory() -> None:
    """300 MB offered without Content-Length: reading stops past 1 MiB, memory stays small."""
    flood = Flood(300 * 2**20, announce=False)
    async with serving(flood) as url, client_for(url, sizes=SizeLimits(json=2**20)) as client:
        tracemalloc.start()
        try:
            with pytest.raises(TransportError, match="exceeds the limit") as info:
                await client.get(UL_PATH)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert 0 == in_flight(client)
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert flood.sent < 64 * 2**20  # the server was cut off, not read to the end
    # An oversized answer would be as big on a retry: it is not retried.
    assert not info.value.attempts


async def test_an_announced_oversized_answer_is_refused_before_its_body() -> None:
    flood = Flood(300 * 2**20, announce=True)
    async with serving(flood) as url, client_for(url, sizes=SizeLimits(json=2**20)) as client:
        with pytest.raises(TransportError, match="announces 314,572,800 bytes"):
            await client.get(UL_PATH)


async def test_a_download_past_its_max_size_writes_nothing(tmp_path: pathlib.Path) -> None:
    flood = Flood(8 * 2**20, announce=False, content_type="application/pdf")
    async with serving(flood) as url, client_for(url) as client:
        with pytest.raises(TransportError, match="exceeds the limit"):
            await client.download(f"{url}/files/a.pdf", tmp_path / "a.pdf", max_size=2**20)
        announced = Flood(8 * 2**20, announce=True, content_type="application/pdf")
    async with serving(announced) as url, client_for(url) as client:
        with pytest.raises(TransportError, match="announces"):
            await client.download(f"{url}/files/a.pdf", tmp_path / "a.pdf", max_size=2**20)
    assert [] == [p async for p in anyio.Path(tmp_path).iterdir()]


# -- nothing holds the token where error reporters look ------------------------------------


def walk(value: Any, seen: set[int], depth: int = 0) -> Iterator[str]:
    """What an error reporter serialises of a value: containers walked, the rest repr()-ed."""
    if id(value) in seen or depth > 6:
        return
    seen.add(id(value))
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield repr(key)
            yield from walk(item, seen, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from walk(item, seen, depth + 1)
    else:
        try:
            yield repr(value)
        except Exception as exc:  # a repr that fails is reported as such, not captured
            yield type(exc).__name__
        if isinstance(value, str | bytes):
            yield str(value)


def captures(error: BaseException) -> tuple[list[str], set[str]]:
    """Texts a frame-locals reporter would record for ``error`` and its chain; frame names."""
    texts: list[str] = list(traceback.format_exception(error))
    names: set[str] = set()
    seen: set[int] = set()
    pending = [error]
    while pending:
        exc = pending.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        texts += [str(exc), repr(exc), *(str(note) for note in getattr(exc, "__notes__", ()))]
        tb = exc.__traceback__
        while tb is not None:
            names.add(tb.tb_frame.f_code.co_name)
            for name, value in tb.tb_frame.f_locals.items():
                texts.append(name)
                texts.extend(walk(value, set()))
            tb = tb.tb_next
        pending += [e for e in (exc.__cause__, exc.__context__) if e is not None]
    return texts, names


async def hang_up(stream: anyio.abc.SocketStream) -> None:
    """Read the request, answer nothing, close."""
    await read_request(stream)


async def break_off(stream: anyio.abc.SocketStream) -> None:
    """Headers and half a body, then close."""
    await read_request(stream)
    await stream.send(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )


@pytest.mark.parametrize("server", [hang_up, break_off], ids=["no_answer", "broken_body"])
async def test_no_frame_and_no_span_event_holds_the_token(server: Handler) -> None:
    """Frame locals of the error and its chained httpx cause, tracebacks, OpenTelemetry events."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async with serving(server) as url, client_for(url) as client:
        with pytest.raises(TransportError) as info:
            await client.get(UL_PATH)
    texts, names = captures(info.value)
    assert {"_request", "_run", "_receive"} <= names  # the frames the issue names were walked
    assert info.value.__cause__ is not None  # the httpx error is kept, its locals are not
    for span in exporter.get_finished_spans():
        texts.append(repr(dict(span.attributes or {})))
        texts += [repr(dict(event.attributes or {})) for event in span.events]
    assert exporter.get_finished_spans()
    secret = TOKEN.split(".")[2]
    leaks = [text for text in texts if TOKEN in text or secret in text]
    assert [] == leaks
