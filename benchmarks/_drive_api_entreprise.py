"""Drive the ``api-entreprise`` PyPI package from threads (its own environment).

Run by ``bench_e2e.py`` with the interpreter of ``benchmarks/.venv-api-entreprise``
(``pip install 'api-entreprise[ratelimit]'``: the package wants pyrate-limiter
2.x, which cannot live beside the 4.x of the project's benchmark extra).

Each thread calls ``donnees_etablissement(siret)`` (v3 INSEE établissements,
the package's JSON call closest to the other contenders' v4 one) until
``--stop``, handling errors as its README suggests: ``LimitHitError`` (its
rate limiter is full, or HTTP 429) carries a delay to wait, after which the
thread asks for the same SIRET again (no input is dropped). The package's
delays are in production seconds (at least 1 s, a whole minute by default),
so they are scaled by ``period / 60`` as the emulator scales the minute.
Prints one JSON line: what the threads saw.
"""

from __future__ import annotations

import argparse
import collections
import json
import threading
import time

from api_entreprise import ApiEntreprise, Config, ContextInfo, LimitHitError
from pyrate_limiter import Limiter, RequestRate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--threads", type=int, default=25)
    parser.add_argument("--limit", type=int, default=250)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--start", type=float, required=True, help="time.monotonic() to start")
    parser.add_argument("--stop", type=float, required=True, help="time.monotonic() to stop")
    parser.add_argument("--sirets", required=True, help="file with one SIRET per line")
    args = parser.parse_args()

    scale = args.period / 60.0
    limiter = Limiter(RequestRate(args.limit, args.period))
    context = ContextInfo(context="benchmark", recipient="13002526500013", object="e2e")
    api = ApiEntreprise(
        Config(
            base_url=args.url,
            token=args.token,
            default_context_info=context,
            rate_limiter=limiter,
            timeout_s=2,
        )
    )
    with open(args.sirets, encoding="ascii") as lines:
        sirets = iter([line.strip() for line in lines if line.strip()])
    lock = threading.Lock()
    seen: collections.Counter[str] = collections.Counter()

    def next_siret() -> str | None:
        with lock:
            return next(sirets, None)

    def worker() -> None:
        time.sleep(max(0.0, args.start - time.monotonic()))
        siret = None
        while time.monotonic() < args.stop:
            if siret is None:
                siret = next_siret()
                if siret is None:
                    return
            again = False  # refused (by its limiter or the server): the same SIRET after the pause
            try:
                api.donnees_etablissement(siret)
                outcome, pause = "ok", 0.0
            except LimitHitError as exc:  # Http429Error is one too
                outcome, pause, again = type(exc).__name__, exc.delay * scale, True
            except ValueError as exc:
                # Its 429 handler reads Retry-After with int(): a scaled server's
                # "0.42" breaks it. At 60 s it would be an Http429Error of the
                # default 60 s: wait that, scaled.
                outcome, pause, again = f"ValueError ({str(exc)[:40]})", 60 * scale, True
            except Exception as exc:  # timeouts once banned, schema errors...
                outcome, pause = type(exc).__name__, 0.0
            with lock:
                seen[outcome] += 1
            if not again:
                siret = None
            if pause:
                time.sleep(pause)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, args.stop - time.monotonic()) + 5)
    print(json.dumps(dict(seen)), flush=True)


if __name__ == "__main__":
    main()
