"""Serve a fresh emulator from its own process, for ``bench_e2e.py``.

Usage: ``python _serve_emulator.py PERIOD TOKEN``. Prints the base URL, serves
until a line arrives on stdin, then prints every recorded request as JSON and
exits. In a process of its own, the server does not compete with the client
measured for the interpreter lock (with both in one process, each hop of a
request can wait a whole switch interval, 5 ms).
"""

from __future__ import annotations

import json
import sys

from _common import ETABLISSEMENT_V3, ETABLISSEMENT_V4, payload

from apientreprise_async.testing import Emulator


def make_emulator(period: float, token: str) -> Emulator:
    """One token, and a 200 for any SIRET on the v3 and v4 établissement routes."""
    emulator = Emulator(period=period)
    emulator.add_token(token)
    emulator.add_case(ETABLISSEMENT_V4, {}, 200, payload(ETABLISSEMENT_V4)[0])
    emulator.add_case(ETABLISSEMENT_V3, {}, 200, payload(ETABLISSEMENT_V3)[0])
    return emulator


def main() -> None:
    period, token = float(sys.argv[1]), sys.argv[2]
    emulator = make_emulator(period, token)
    with emulator.serve() as url:
        print(url, flush=True)
        sys.stdin.readline()
        records = [
            {
                "status": r.status,
                "outcome": r.outcome,
                "epoch": r.epoch,
                "monotonic": r.monotonic,
                "token": r.token,
            }
            for r in emulator.requests
        ]
    print(json.dumps(records), flush=True)


if __name__ == "__main__":
    main()
