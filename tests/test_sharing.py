"""The default backend finds its sibling processes and moves to the host's store."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from trio.testing import MockClock

from apientreprise_async._sharing import DefaultBackend, new_default_backend
from apientreprise_async.backends import Blocked, Grant, SlotRequest

from .conftest import ROOT

REQUESTS = [SlotRequest("tok/json", 3), SlotRequest("ip", 100)]

# A sibling: three grants in memory, two sent (occupied 5 s), one left in flight.
_SIBLING = """
import sys, anyio
from apientreprise_async._governor import default_backend
from apientreprise_async.backends import Grant, SlotRequest

REQUESTS = [SlotRequest("tok/json", 3), SlotRequest("ip", 100)]

async def main():
    backend = default_backend()
    grants = [await backend.acquire(REQUESTS) for _ in range(3)]
    assert all(type(g) is Grant for g in grants), grants
    now = anyio.current_time()
    for grant in grants[:2]:
        await backend.release(grant, end=now + 5)
    print("alone" if not backend.shared else "shared", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)
    print("shared" if backend.shared else "alone", flush=True)
    await backend.release(grants[2], end=anyio.current_time() + 5)
    print("released", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)

anyio.run(main)
"""


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runtime directory of this test's own."""
    monkeypatch.setenv("APIENTREPRISE_ASYNC_RUNTIME_DIR", str(tmp_path))
    return tmp_path


def test_alone_it_stays_in_memory(runtime: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One process: memory, registered, the choice logged once at INFO."""
    backend = new_default_backend()

    async def main() -> None:
        for _ in range(3):
            assert isinstance(await backend.acquire(REQUESTS), Grant)

    with caplog.at_level(logging.INFO, logger="apientreprise_async.governor"):
        anyio.run(main, backend="asyncio")
    try:
        assert not backend.shared
        assert [r.getMessage() for r in caplog.records if "no other process" in r.getMessage()]
        assert 1 == len(caplog.records)
        assert 1 == len(list((runtime / "members").glob("*.lock")))
        assert not (runtime / "governor.sqlite3").exists()  # no store opened alone
    finally:
        backend.clear()
    assert not list((runtime / "members").iterdir())  # clear() leaves the host's siblings


@pytest.mark.parametrize("anyio_backend", [("trio", {"clock": MockClock(autojump_threshold=0)})])
@pytest.mark.anyio
async def test_a_virtual_clock_never_shares(runtime: Path) -> None:
    """A test's virtual time means nothing to other processes: no registration at all."""
    backend = new_default_backend()
    assert isinstance(await backend.acquire(REQUESTS), Grant)
    assert not backend.shared
    assert not (runtime / "members").exists()


def test_a_newcomer_waits_for_the_history_of_a_sibling_alone(
    runtime: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sibling alone in memory replays its calls into the store before the newcomer grants.

    The sibling holds 3 slots of a bucket of 3 (two sent, one in flight): the
    newcomer sees all three, then the in-flight one's end once it is answered.
    """
    sibling = subprocess.Popen(
        [sys.executable, "-c", _SIBLING],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    backend: DefaultBackend = new_default_backend()

    async def main() -> dict[str, Any]:
        assert sibling.stdin is not None
        assert sibling.stdout is not None
        assert "alone" == sibling.stdout.readline().strip()
        started = anyio.current_time()
        with anyio.fail_after(5):
            while True:  # the join: blocked briefly while the sibling replays
                result = await backend.acquire(REQUESTS)
                assert isinstance(result, Blocked), result
                state = backend.snapshot().get("tok/json")
                if state is not None and state.occupied == 3:
                    break
                await anyio.sleep_until(result.ready[0] or anyio.current_time())
        assert 1 == state.open  # the call in flight, owned by the live sibling
        assert backend.shared
        sibling.stdin.write("go\n")
        sibling.stdin.flush()
        assert "shared" == sibling.stdout.readline().strip()
        assert "released" == sibling.stdout.readline().strip()
        blocked = await backend.acquire(REQUESTS)
        assert isinstance(blocked, Blocked)
        ready = blocked.ready[0]
        assert ready is not None
        # The earliest end: one of the two sent before the move, about 5 s after them.
        return {"wait": ready - started, "state": backend.snapshot()["tok/json"]}

    try:
        with caplog.at_level(logging.INFO, logger="apientreprise_async.governor"):
            seen = anyio.run(main, backend="asyncio")
    finally:
        backend.clear()
        sibling.kill()
        sibling.communicate()
    # Its calls hold the bucket until 5 s after they were made (less however long we took).
    assert 1.0 <= seen["wait"] <= 5.1, seen
    assert (0, 3) == (seen["state"].open, seen["state"].occupied)
    assert [r for r in caplog.records if "1 other process(es)" in r.getMessage()]


def test_the_fastapi_lifespan_uses_the_sharing_default() -> None:
    """The app's client, built with no governor, is admitted by the host-aware default."""
    from fastapi import FastAPI

    from apientreprise_async._governor import default_backend
    from apientreprise_async.fastapi import ApiEntrepriseSettings, make_lifespan

    from .conftest import RECIPIENT, TOKEN

    settings = ApiEntrepriseSettings(token=TOKEN, recipient=RECIPIENT, context="tests")
    app = FastAPI(lifespan=make_lifespan(settings))

    async def main() -> Any:
        async with app.router.lifespan_context(app) as state:
            return next(iter(state.values())).governor.backend

    backend = anyio.run(main, backend="asyncio")
    assert backend is default_backend()
    assert isinstance(backend, DefaultBackend)


def test_an_unusable_store_is_said_loudly(runtime: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A sibling is there but the store cannot be opened: memory, and an ERROR saying why."""
    (runtime / "governor.sqlite3").mkdir(parents=True)  # a directory where the file goes
    sibling = subprocess.Popen(
        [sys.executable, "-c", _SIBLING],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    backend = new_default_backend()

    async def main() -> None:
        assert sibling.stdout is not None
        assert "alone" == sibling.stdout.readline().strip()
        assert isinstance(await backend.acquire(REQUESTS), Grant)

    try:
        with caplog.at_level(logging.INFO, logger="apientreprise_async.governor"):
            anyio.run(main, backend="asyncio")
    finally:
        backend.clear()
        sibling.kill()
        sibling.communicate()
    assert not backend.shared
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors
    assert "cannot be used" in errors[0].getMessage()


def test_the_synchronous_client_joins_its_siblings(runtime: Path) -> None:
    """``Client(token)`` (a loop on a thread of its own) joins the host like an async client."""
    from apientreprise_async import Client
    from apientreprise_async._governor import default_backend
    from apientreprise_async.testing import Emulator

    from .conftest import RECIPIENT, TOKEN

    emulator = Emulator(period=1.0)
    emulator.add_token(TOKEN)
    sibling = subprocess.Popen(
        [sys.executable, "-c", _SIBLING],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert sibling.stdout is not None
        assert "alone" == sibling.stdout.readline().strip()
        with Client(
            TOKEN, transport=emulator.transport(), recipient=RECIPIENT, context="tests", object="t"
        ) as client:
            client.call("api_entreprise_v4_insee_unites_legales", siren="130025265")
            assert client.governor.backend is default_backend()
        backend = default_backend()
        assert isinstance(backend, DefaultBackend)
        assert backend.shared
        assert 1 == len(emulator.requests)
    finally:
        sibling.kill()
        sibling.communicate()
