"""Chaos runs of the Redis governor: what a window holds and what throughput is kept.

Usage::

    .venv/bin/python benchmarks/bench_redis_chaos.py            # about a minute
    .venv/bin/python benchmarks/bench_redis_chaos.py --periods 40 --faults 12

Three worker processes (``tests/_redis_worker.py``) share one token and an IP
limit of 20 per 0.5 s window against the emulator on loopback, while Redis is
killed, restarted empty, flushed and replaced by a lagging copy of its data at
random moments (``tests/_redis_chaos.py``). Per run: the busiest span of one
window at the server, the windows checked (one per arrival), the faults, the
losses the workers saw, and the throughput kept (arrivals against what the
limit allows over the span they took). A run without faults is the baseline.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests._redis_chaos import run_chaos
from tests.conftest import TOKEN


def main() -> None:
    """Run both fail modes with and without faults; print a Markdown table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--periods", type=int, default=20)
    parser.add_argument("--faults", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    print(
        "| fail_mode | faults injected | losses seen | busiest window / limit | windows checked "
        "| calls ended | refused (fail closed) | throughput kept |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for fail_mode in ("closed", "local"):
        for faults in (0, args.faults):
            for seed in range(1, args.seeds + 1 if faults else 2):
                f = run_chaos(
                    TOKEN, fail_mode=fail_mode, periods=args.periods, faults=faults, seed=seed
                )
                injected = ", ".join(f"{n} {k}" for k, n in sorted(f["faults"].items())) or "none"
                refused = f["statuses"].get("RedisUnavailableError", 0)
                print(
                    f"| {fail_mode} | {injected} | {f['losses_seen']} "
                    f"| {f['busiest']}/{f['limit']} "
                    f"| {f['windows_checked']} | {f['ended']}/{f['calls']} | {refused} "
                    f"| {f['throughput']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
