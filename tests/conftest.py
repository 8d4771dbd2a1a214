"""Shared fixtures: both anyio backends, tokens, the shared reference folder."""

from __future__ import annotations

import atexit
import base64
import itertools
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "api-entreprise"
RECIPIENT = "13002526500013"


def make_jwt(claims: dict[str, Any] | None = None, *, exp_in_days: float = 400) -> str:
    """A JWT-shaped token with the given claims (unsigned: the client never verifies)."""
    body = {"sub": "tests", "iat": int(time.time()), "exp": int(time.time() + exp_in_days * 86400)}
    body.update(claims or {})

    def part(obj: dict[str, Any]) -> str:
        raw = json.dumps(obj).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(body)}.c2lnbmF0dXJlLXNlY3JldC1wYXJ0"


# Processes of this test run (and the workers they start) find each other here, not
# in the user's runtime directory where another test run could be using the library.
_RUNTIME = tempfile.mkdtemp(prefix="apientreprise-async-tests-")
atexit.register(shutil.rmtree, _RUNTIME, ignore_errors=True)
os.environ.setdefault("APIENTREPRISE_ASYNC_RUNTIME_DIR", _RUNTIME)
_runs = itertools.count()


@pytest.fixture(autouse=True)
def _own_runtime_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test (and the worker processes it starts) shares the host's quota with no other.

    The host store remembers a period of calls (a minute of them in the IP bucket with
    the default limits): a test must not inherit the previous test's workers' calls.
    """
    monkeypatch.setenv("APIENTREPRISE_ASYNC_RUNTIME_DIR", os.path.join(_RUNTIME, str(next(_runs))))


TOKEN = make_jwt({"scopes": ["unites_legales_etablissements_insee"]})


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Run every async test on asyncio and on trio."""
    return request.param


def shared_or_skip() -> pathlib.Path:
    """The shared reference folder, or skip the test saying why."""
    if not (SHARED / "openapi.yaml").exists():
        pytest.skip(f"reference data absent: {SHARED} (clone beside ../shared to run this)")
    return SHARED


@pytest.fixture(autouse=True)
def _fresh_process_governor() -> Any:
    """Each test starts with a fresh process-wide governor, through the public reset."""
    from apientreprise_async.testing import reset_default_governor

    reset_default_governor()
    yield
    reset_default_governor()
