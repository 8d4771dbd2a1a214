"""Chaos: three worker processes, one token, Redis failing at random moments.

Redis is killed, restarted empty, flushed and replaced by a lagging copy of
its data (a failover to a replica that missed the last writes) at moments drawn
at random, while the workers call the emulator over loopback. Every span of one
period at the server holds at most the limit, no worker hangs, every call ends
(answered, or refused with a clear error when failing closed).
"""

from __future__ import annotations

import pytest

from ._redis_chaos import run_chaos
from ._redis_server import binary
from .conftest import TOKEN


@pytest.mark.parametrize("fail_mode", ["closed", "local"])
def test_chaos_never_overfills_a_window(fail_mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Busiest span <= the limit, every call ends, no worker hangs, no 429, no ban."""
    binary()
    figures = run_chaos(TOKEN, fail_mode=fail_mode, seed=7 if fail_mode == "local" else 3)
    with capsys.disabled():
        print(f"\n[chaos, {fail_mode}] {figures}")
    assert figures["busiest"] <= figures["limit"]
    assert figures["calls"] == figures["ended"]
    assert [0] * figures["workers"] == figures["returncodes"]
    assert 0 == figures["rejected_429"]
    assert 0 == figures["banned"]
    assert sum(figures["faults"].values()) == 4
    allowed = {"404", "200", "RedisUnavailableError"} if fail_mode == "closed" else {"404", "200"}
    assert set(figures["statuses"]) <= allowed
