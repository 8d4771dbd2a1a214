"""The examples in ``examples/`` run against the emulator served on loopback.

The thread fan-out runs as a script, in a subprocess; the Django view and the
Celery task (neither framework needed) are called from pools of threads, as
their servers would. The emulator is strict: it would answer 429s and ban.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from apientreprise_async.testing import Emulator

from .conftest import ROOT, TOKEN

UNKNOWN = "418166096"  # a valid SIREN the emulator does not know


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """The emulator on loopback, and the examples' environment pointing at it."""
    from examples import _demo

    emulator = Emulator()
    emulator.add_token(TOKEN)
    with emulator.serve() as url:
        monkeypatch.setenv("API_ENTREPRISE_TOKEN", TOKEN)
        monkeypatch.setenv("API_ENTREPRISE_BASE_URL", url)
        monkeypatch.setattr(_demo, "_client", None)
        yield emulator
        if _demo._client is not None:
            _demo._client.close()


def answered_without_429(emulator: Emulator) -> list[int | None]:
    statuses = [r.status for r in emulator.requests]
    assert 429 not in statuses
    assert all(r.outcome == "answered" for r in emulator.requests)
    return statuses


def test_thread_fanout_script(served: Emulator) -> None:
    """Sixteen threads, every built-in company looked up 6 times: all answered, exit 0."""
    result = subprocess.run(
        [sys.executable, "-m", "examples.thread_fanout", "--threads", "16", "--repeat", "6"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    lines = result.stdout.splitlines()
    assert 30 == len(lines)
    assert all(line.split("\t")[1] == "ok" for line in lines)
    assert "30 calls from 16 threads" in result.stderr
    assert answered_without_429(served)


class FakeRequest:
    """The part of Django's ``HttpRequest`` the view reads."""

    def __init__(self, **query: str) -> None:
        self.GET = query


def test_django_view_from_a_thread_pool(served: Emulator) -> None:
    """Twelve concurrent requests: JSON answers, 404 for an unknown SIREN, 400 for a bad one."""
    from examples.django_view import unite_legale

    sirens = ["832147656", "794203869", UNKNOWN, "123"] * 3
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers: list[Any] = list(
            pool.map(lambda s: unite_legale(FakeRequest(dossier="42"), s), sirens)
        )
    statuses = [a.status_code for a in answers]
    assert [200, 200, 404, 400] * 3 == statuses
    assert {"siren": "832147656", "siege": "83214765600017"} == json.loads(answers[0].content)
    assert set(answered_without_429(served)) == {200, 404}  # "123" never left


def test_celery_task_body_from_worker_threads(served: Emulator) -> None:
    """The task's body from eight worker threads: two calls per known company."""
    from examples.celery_task import enrichir

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda s: enrichir(s, "42"), ["832147656", UNKNOWN] * 4))
    assert {"siren": UNKNOWN, "found": False} == results[1]
    known = results[0]
    assert known["found"]
    assert known["siret_siege"] == "83214765600017"
    assert known["commune_siege"]
    assert all(r == known for r in results[::2])
    assert answered_without_429(served)
