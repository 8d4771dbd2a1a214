"""Issue 21's acceptance: worker processes of one host, nothing configured, never banned.

Each worker is a separate Python process with its own clients and the
default governor (``AsyncClient(token)`` or ``AsyncClient(token, limits=...)``,
no backend named); the emulator is served on loopback by this process with
clock-aligned windows of one second. Together the workers must get no 429, never be banned, finish
every call, keep each of the server's windows within its limit, and (with
limits lowered so that a loaded 2-core machine keeps up: the emulator and
three full clients share it) take at least 85 % of what the workers offered
each full window (see ``share_of_offer``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from apientreprise_async.testing import Emulator

from ._redis_worker import RECIPIENT, share_of_offer, siren
from .conftest import ROOT, make_jwt

PERIOD = 1.0
GROUP = "json_resources_entreprise"
TOKENS = [
    make_jwt({"sub": f"worker-{i}", "scopes": ["unites_legales_etablissements_insee"]})
    for i in range(6)
]


class Workers:
    """Worker processes sharing one runtime directory, started and driven by a test."""

    def __init__(self, url: str, directory: Path) -> None:
        self.url = url
        self.env = {
            **os.environ,
            "PYTHONWARNINGS": "ignore",
            "APIENTREPRISE_ASYNC_RUNTIME_DIR": str(directory),
        }
        self.processes: list[subprocess.Popen[str]] = []

    def start(
        self, count: int, tokens: Sequence[str], **options: Any
    ) -> list[subprocess.Popen[str]]:
        """Start ``count`` workers and wait until each is ready."""
        started = []
        for _ in range(count):
            index = len(self.processes)
            argv = [sys.executable, "-m", "tests._host_worker", "--url", self.url]
            argv += ["--tokens", ",".join(tokens), "--index", str(index)]
            for name, value in options.items():
                argv += [f"--{name}", str(value)]
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=self.env,
            )
            self.processes.append(process)
            started.append(process)
        for process in started:
            assert process.stdout is not None
            assert "ready" == process.stdout.readline().strip()
        return started

    @staticmethod
    def go(processes: Sequence[subprocess.Popen[str]]) -> None:
        """Let them all call at once."""
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()

    @staticmethod
    def progress(process: subprocess.Popen[str], calls: int) -> None:
        """Wait until ``process`` has had ``calls`` answers."""
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("progress ") and int(line.split()[1]) >= calls:
                return
        raise AssertionError("the worker ended before its progress")

    def reports(self, processes: Sequence[subprocess.Popen[str]]) -> list[dict[str, Any]]:
        """Each worker's final JSON line."""
        reports = []
        for process in processes:
            out, _ = process.communicate(timeout=60)
            assert 0 == process.returncode, out[-2000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Emulator, Workers]]:
    """A strict emulator on loopback (1 s aligned windows) and a worker launcher."""
    emulator = Emulator(period=PERIOD, windows="aligned", ip_limit=150)
    with emulator.serve() as url:
        workers = Workers(url, tmp_path / "run")
        try:
            yield emulator, workers
        finally:
            workers.close()


def efficiency(emulator: Emulator, limit: int, reports: list[dict[str, Any]]) -> float:
    """Answered calls per full aligned window, over what the workers offered it (see
    ``share_of_offer``: a window a starved CPU left short with nothing waiting in the
    governor does not count against the governor)."""
    records = [r for r in emulator.requests if r.status in (200, 404)]
    windows = Counter(int(r.epoch // PERIOD) for r in records)
    by_arrival, by_grant, full = share_of_offer([r.epoch for r in records], reports, PERIOD, limit)
    assert full >= 2, windows
    print(
        f"calls per window {sorted(windows.items())}, share of the offer {by_arrival:.3f} "
        f"(arrivals) {by_grant:.3f} (grants)"
    )
    return by_arrival


def check_safe(
    emulator: Emulator, reports: list[dict[str, Any]], calls: int, *, exact: bool = True
) -> Counter[str]:
    """No 429, no ban, every call of the reporting workers answered (404: made-up SIRENs)."""
    statuses = sum((Counter(r["statuses"]) for r in reports), Counter[str]())
    assert 0 == len([r for r in emulator.requests if r.status == 429]), statuses
    assert emulator.banned_until() is None
    assert all(r.outcome == "answered" for r in emulator.requests)
    assert calls == statuses["200"] + statuses["404"], statuses
    if exact:
        assert calls == len(emulator.requests)
    return statuses


def test_three_default_workers_one_token_900_calls(served: tuple[Emulator, Workers]) -> None:
    """The issue's case: 3 x ``AsyncClient(token)``, one token at 250 per 1 s window, 900 calls.

    Nothing but the token and the URL: the default limits (a 60 s period; each
    answered slot frees when its server window ends) and the default governor.
    """
    emulator, workers = served
    emulator.ip_limit = 1000
    token = emulator.add_token(TOKENS[0])
    processes = workers.start(3, [token], calls=300, tasks=20, period=0)
    workers.go(processes)
    reports = workers.reports(processes)
    check_safe(emulator, reports, 900)
    assert emulator.max_calls_in_a_window(token=token) <= 250


def test_six_tokens_share_the_ip_ceiling(served: tuple[Emulator, Workers]) -> None:
    """Six tokens over three workers: the IP ceiling binds, is never passed, >= 85 % used."""
    emulator, workers = served
    emulator.ip_limit = 80
    tokens = [emulator.add_token(t, limits={GROUP: 40}) for t in TOKENS]
    processes = workers.start(3, tokens, calls=100, tasks=6, ip=80)
    workers.go(processes)
    reports = workers.reports(processes)
    check_safe(emulator, reports, 300)
    # The IP bucket holds each slot a period after its answer: no span of a period sees more.
    assert emulator.max_calls_in_any_window() <= 80
    assert emulator.max_calls_in_a_window() <= 40
    assert efficiency(emulator, 80, reports) >= 0.85


def test_a_worker_killed_mid_call_and_one_joining_late(served: tuple[Emulator, Workers]) -> None:
    """SIGKILL one of two workers mid-run, start a third late: never over, no 429, busy.

    The killed worker's calls in flight keep their slots for one period after its
    death is noticed (they may have reached the server): at most 5 of 60.
    """
    emulator, workers = served
    token = emulator.add_token(TOKENS[0], limits={GROUP: 60})
    victim, survivor, late = workers.start(3, [token], calls=120, tasks=5)
    workers.go([victim, survivor])
    workers.progress(victim, 30)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    workers.go([late])  # its first call registers it among the living
    reports = workers.reports([survivor, late])
    statuses = check_safe(emulator, reports, 240, exact=False)
    assert 240 == statuses["200"] + statuses["404"]
    assert emulator.max_calls_in_a_window(token=token) <= 60
    assert efficiency(emulator, 60, reports) >= 0.85


def test_two_cli_batches_at_once_share_the_token(
    served: tuple[Emulator, Workers], tmp_path: Path
) -> None:
    """`apientreprise batch` run twice on one host, nothing configured: one quota between them."""
    emulator, workers = served
    token = emulator.add_token(TOKENS[0], limits={GROUP: 30})
    processes = []
    for index in range(2):
        inputs = tmp_path / f"in{index}.txt"
        inputs.write_text("".join(f"{siren(index * 1000 + n)}\n" for n in range(45)))
        argv = [sys.executable, "-m", "apientreprise_async", "batch", "insee.unites_legales"]
        argv += ["--input", str(inputs), "--output", str(tmp_path / f"out{index}.jsonl")]
        argv += ["--period", "1", "--base-url", workers.url, "--recipient", RECIPIENT]
        argv += ["--context", "acceptance", "--object", "host"]
        env = {**workers.env, "API_ENTREPRISE_TOKEN": token}
        processes.append(
            subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        )
    for process in processes:
        out, _ = process.communicate(timeout=60)
        assert 0 == process.returncode, out[-2000:]
    assert 90 == len(emulator.requests)
    assert 0 == len([r for r in emulator.requests if r.status == 429])
    assert emulator.banned_until() is None
    assert emulator.max_calls_in_a_window(token=token) <= 30
