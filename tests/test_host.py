"""The host-local backend: conformance, files, clocks, dead workers."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from trio.testing import MockClock

from apientreprise_async.backends import Blocked, Grant, SlotRequest
from apientreprise_async.host import HostBackend, runtime_directory
from apientreprise_async.testing import check_backend
from apientreprise_async.testing._conformance import _CHECKS

from .conftest import ROOT


@pytest.fixture
def anyio_backend() -> Any:
    """Virtual time: the suite's waits cost nothing."""
    return ("trio", {"clock": MockClock(autojump_threshold=0)})


@pytest.mark.anyio
async def test_host_backend_conforms_in_virtual_time(tmp_path: Path) -> None:
    """Every check passes with exact times when the store shares the test's clock."""
    names = await check_backend(
        lambda: HostBackend(tmp_path, clock=anyio.current_time), tolerance=0.0
    )
    assert len(_CHECKS) == len(names)


def test_host_backend_conforms_on_the_host_clock(tmp_path: Path) -> None:
    """The same checks in real time on asyncio: times converted at the edge stay exact enough."""

    async def main() -> list[str]:
        return await check_backend(lambda: HostBackend(tmp_path), hold=0.05, tolerance=0.02)

    assert len(_CHECKS) == len(anyio.run(main, backend="asyncio"))


def test_files_are_private(tmp_path: Path) -> None:
    """The directory is 0700 and every file in it 0600, whatever the umask."""
    old = os.umask(0)
    try:
        directory = tmp_path / "run"
        HostBackend(directory)
    finally:
        os.umask(old)
    assert 0o700 == stat.S_IMODE(directory.stat().st_mode)
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert {"governor.sqlite3", "governor.lock"} <= {p.name for p in files}
    for path in files:
        assert 0o600 == stat.S_IMODE(path.stat().st_mode), path
    assert 0o700 == stat.S_IMODE((directory / "owners").stat().st_mode)


def test_runtime_directory_is_per_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The override, then $XDG_RUNTIME_DIR, then a per-uid folder of the temp dir."""
    monkeypatch.setenv("APIENTREPRISE_ASYNC_RUNTIME_DIR", str(tmp_path / "x"))
    assert tmp_path / "x" == runtime_directory()
    monkeypatch.delenv("APIENTREPRISE_ASYNC_RUNTIME_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert tmp_path / "apientreprise_async" == runtime_directory()
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert runtime_directory().name == f"apientreprise_async-{os.getuid()}"


def test_a_directory_open_to_others_is_closed(tmp_path: Path) -> None:
    """A pre-existing directory readable by others is made private before use."""
    directory = tmp_path / "open"
    directory.mkdir(mode=0o777)
    os.chmod(directory, 0o777)
    HostBackend(directory)
    assert 0o700 == stat.S_IMODE(directory.stat().st_mode)


_HOLDER = """
import sys, anyio
from apientreprise_async.backends import Blocked, Grant, SlotRequest
from apientreprise_async.host import HostBackend

async def main():
    backend = HostBackend(sys.argv[1])
    grant = await backend.acquire([SlotRequest("tok/b", 1), SlotRequest("ip", 10)])
    assert type(grant).__name__ == "Grant", grant
    print("held", flush=True)
    await anyio.sleep(60)

anyio.run(main)
"""


def test_slots_of_a_killed_worker_free_within_a_period(tmp_path: Path) -> None:
    """A worker SIGKILLed with a call in flight: its slot is occupancy for one hold, then free."""
    requests = [SlotRequest("tok/b", 1), SlotRequest("ip", 10)]
    backend = HostBackend(tmp_path, poll=0.01)

    async def teach() -> None:
        first = await backend.acquire(requests)
        assert isinstance(first, Grant)
        # Teach the bucket its hold: a sent call answered now occupies 0.2 s.
        await backend.release(first, end=anyio.current_time() + 0.2)
        await anyio.sleep(0.2)

    async def after_kill(holder: subprocess.Popen[str]) -> None:
        blocked = await backend.acquire(requests)
        # The other process's call is in flight, its owner alive: look again soon.
        assert isinstance(blocked, Blocked)
        now = anyio.current_time()
        assert blocked.ready[0] is not None
        assert now < blocked.ready[0] <= now + 0.011
        holder.kill()
        holder.wait()
        await anyio.sleep(0.11)  # an owner seen alive is trusted for 0.1 s
        killed_at = anyio.current_time()
        # Its slot now counts as a call answered when its death was seen.
        blocked = await backend.acquire(requests)
        assert isinstance(blocked, Blocked), blocked
        ready = blocked.ready[0]
        assert ready is not None
        assert killed_at + 0.19 <= ready <= killed_at + 0.25
        await anyio.sleep_until(ready)
        assert isinstance(await backend.acquire(requests), Grant)

    anyio.run(teach, backend="asyncio")
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) as holder:
        try:
            assert holder.stdout is not None
            assert "held" == holder.stdout.readline().strip()
            anyio.run(after_kill, holder, backend="asyncio")
        finally:
            holder.kill()


def test_a_corrupt_store_is_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file that is not a database (a stray or truncated file): a new store, logged."""
    (tmp_path / "governor.sqlite3").write_bytes(b"not a database at all" * 100)
    os.chmod(tmp_path / "governor.sqlite3", 0o600)
    backend = HostBackend(tmp_path)

    async def main() -> None:
        assert isinstance(await backend.acquire([SlotRequest("tok/b", 1)]), Grant)

    anyio.run(main, backend="asyncio")
    assert [r for r in caplog.records if "unusable" in r.getMessage()]
