"""Look up many companies at once from plain threads, with one synchronous ``Client``.

Run from the repository root (the emulator answers when no token is set)::

    python -m examples.thread_fanout 832147656 794203869 881054324
    python -m examples.thread_fanout --threads 16 --repeat 50   # the built-in companies

Sixteen threads call at once; the process's governor queues them under the
token's limits and the IP ceiling, first come first served, so the run never
earns a 429 however many threads or SIRENs. Prints one line per SIREN and a
summary on stderr; exits 1 if any call failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from apientreprise_async import ApiEntrepriseError, NotFoundError

from ._demo import shared_client

__all__ = ["main"]

BUILT_IN = ("832147656", "794203869", "881054324", "802775197", "913508263")


def look_up(siren: str) -> str:
    """One line about ``siren``: its head office, or why there is none."""
    try:
        unite = shared_client().insee.unites_legales(siren).data
    except NotFoundError:
        return f"{siren}\tunknown"
    except ApiEntrepriseError as exc:
        return f"{siren}\terror\t{type(exc).__name__}: {exc}"
    return f"{siren}\tok\t{unite.siret_siege_social}"


def main(argv: list[str] | None = None) -> int:
    """Look every SIREN up from a pool of threads; 0 if every call got an answer."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sirens", nargs="*", help="SIRENs (default: the emulator's companies)")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1, help="look each SIREN up this many times")
    args = parser.parse_args(argv)
    sirens = (args.sirens or list(BUILT_IN)) * args.repeat
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        lines = list(pool.map(look_up, sirens))
    for line in lines:
        print(line)
    outcomes = Counter(line.split("\t")[1] for line in lines)
    counters = shared_client().governor.counters
    print(
        f"{len(lines)} calls from {args.threads} threads in {time.monotonic() - started:.2f} s: "
        f"{dict(outcomes)}; the governor queued {counters.waits}, saw {counters.rate_limited} 429s",
        file=sys.stderr,
    )
    return 1 if outcomes["error"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
