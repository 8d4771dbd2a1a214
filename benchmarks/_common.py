"""Helpers shared by the benchmarks: payloads, timing, medians.

Timing rules, because the machine is small and shared (2 cores, other test runs):
contenders run in interleaved rounds, so a burst of load hits them alike; a
ratio is the median of the per-round ratios; an absolute figure is the median
of the rounds. CPU time (``time.process_time``) is used where everything runs
in this process, since it does not count the time the OS gives to others.
"""

from __future__ import annotations

import copy
import gc
import json
import pathlib
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "api-entreprise" / "payloads"

UNITE_LEGALE_V4 = "api_entreprise_v4_insee_unites_legales"
ETABLISSEMENT_V4 = "api_entreprise_v4_insee_etablissements"
ETABLISSEMENT_V3 = "api_entreprise_v3_insee_etablissements"
LIASSES = "api_entreprise_v3_dgfip_liasses_fiscales"

#: Donnees in the synthetic full-size liasse (a real 2033 A-G return has hundreds).
LIASSE_DONNEES = 600


def staging_case(operation_id: str) -> tuple[dict[str, Any], bytes] | None:
    """The largest 200 case of a staging folder: (params, JSON body), or ``None``."""
    folder = SHARED / operation_id
    if not folder.is_dir():
        return None
    import yaml

    best: tuple[dict[str, Any], bytes] | None = None
    for path in sorted(folder.glob("*.y*ml")):
        case = yaml.safe_load(path.read_text("utf-8"))
        if case.get("status") != 200:
            continue
        body = case["payload"].encode("utf-8")
        if best is None or len(body) > len(best[1]):
            best = (case.get("params") or {}, body)
    return best


def _project_example(operation_id: str) -> bytes:
    """The project's own fictional payload (``tests/record_examples.py``), as a JSON body."""
    import sys

    sys.path.insert(0, str(ROOT))
    from apientreprise_async._catalogue import get_endpoint
    from tests.record_examples import example_data

    data = example_data(get_endpoint(operation_id).record)
    return json.dumps({"data": data, "links": {}, "meta": {}}, ensure_ascii=False).encode()


def payload(operation_id: str) -> tuple[bytes, str]:
    """A 200 body for ``operation_id`` and where it comes from."""
    found = staging_case(operation_id)
    if found is not None:
        return found[1], "staging"
    return _project_example(operation_id), "tests/record_examples.py"


def full_liasse(body: bytes, donnees: int = LIASSE_DONNEES) -> bytes:
    """The staging liasse (one declaration, one donnee) grown to a real return's size.

    Two declarations share ``donnees`` lines, each a copy of the staging line
    with its own codes and values, so that nothing is shared between objects.
    """
    document = json.loads(body)
    declaration = document["data"]["declarations"][0]
    line = declaration["donnees"][0]
    declarations = []
    for number in range(2):
        grown = copy.deepcopy(declaration)
        grown["donnees"] = []
        for index in range(donnees // 2):
            item = copy.deepcopy(line)
            item["code_nref"] = str(300000 + index)
            item["code_absolu"] = str(2000000 + number * 10000 + index)
            item["valeurs"] = [str(index * 7), str(index * 13)]
            grown["donnees"].append(item)
        declarations.append(grown)
    document["data"]["declarations"] = declarations
    return json.dumps(document, ensure_ascii=False).encode()


def median(values: Sequence[float]) -> float:
    """The median, or NaN for nothing."""
    return statistics.median(values) if values else float("nan")


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of round-by-round ratios (robust to load that drifts between rounds)."""
    return median([a / b for a, b in zip(numerator, denominator, strict=True) if b > 0])


def cpu_per_call(function: Callable[[], Any], calls: int) -> float:
    """CPU microseconds per call of ``function``, garbage collector paused."""
    gc.disable()
    try:
        start = time.process_time()
        for _ in range(calls):
            function()
        return (time.process_time() - start) / calls * 1e6
    finally:
        gc.enable()


async def async_per_call(
    function: Callable[[], Awaitable[Any]], calls: int, clock: Callable[[], float]
) -> float:
    """Microseconds per call of ``await function()`` on ``clock``."""
    gc.disable()
    try:
        start = clock()
        for _ in range(calls):
            await function()
        return (clock() - start) / calls * 1e6
    finally:
        gc.enable()


def _luhn_complete(stem: str) -> str:
    """``stem`` followed by the digit that makes its Luhn sum a multiple of 10."""
    for check in "0123456789":
        total = 0
        for index, char in enumerate(reversed(stem + check)):
            digit = int(char) * (2 if index % 2 else 1)
            total += digit - 9 if digit > 9 else digit
        if total % 10 == 0:
            return stem + check
    raise AssertionError("unreachable: one digit always completes a Luhn sum")


def luhn_sirets(count: int, start: int = 10_000_000) -> list[str]:
    """``count`` distinct valid SIRETs (SIREN and SIRET pass Luhn), none a real company's."""
    found = []
    for number in range(start, start + count):
        siren = _luhn_complete(f"9{number % 10**7:07d}")
        found.append(_luhn_complete(f"{siren}{number // 10**7:04d}"))
    return found
