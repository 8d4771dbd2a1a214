"""Structuring time per record: the client's records, plain JSON, and pydantic.

Run alone: ``.venv/bin/python benchmarks/bench_structure.py`` (a few seconds).
For each of the largest payloads (INSEE unité légale and établissement v4,
DGFIP liasse fiscale, as in the staging cases, plus that liasse grown to 600
données), CPU time per record of:

- plain: ``json.loads`` and a few dict lookups (what an untyped client does);
- records: ``json.loads`` then the client's structuring (``structure_lenient``,
  what every call runs: a function generated per record class, the detailed
  pass only when it fails), into frozen records;
- pydantic: ``json.loads`` then ``model_validate`` on models of the same shape
  (``_pydantic_models.py``, strict and frozen as the records), and pydantic's
  own ``model_validate_json`` from the bytes.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from _common import (
    ETABLISSEMENT_V4,
    LIASSE_DONNEES,
    LIASSES,
    UNITE_LEGALE_V4,
    cpu_per_call,
    full_liasse,
    median,
    paired_ratio,
    payload,
)
from _pydantic_models import MODELS

from apientreprise_async._catalogue import get_endpoint
from apientreprise_async._convert import structure, structure_lenient


def _plain_access(operation_id: str) -> Callable[[dict[str, Any]], Any]:
    """A few lookups a caller of an untyped client would make."""
    if operation_id == LIASSES:
        return lambda data: [d["numero_imprime"] for d in data["declarations"]]
    if operation_id == ETABLISSEMENT_V4:
        return lambda data: (data["siret"], data["adresse"]["code_postal"])
    return lambda data: (data["siren"], data["personne_morale_attributs"]["raison_sociale"])


def cases() -> list[tuple[str, str, bytes, str]]:
    """(label, operation id, body, source) for every payload measured."""
    found = []
    for label, operation_id in (
        ("INSEE unité légale v4", UNITE_LEGALE_V4),
        ("INSEE établissement v4", ETABLISSEMENT_V4),
        ("DGFIP liasse fiscale", LIASSES),
    ):
        body, source = payload(operation_id)
        found.append((label, operation_id, body, source))
        if operation_id == LIASSES:
            grown = full_liasse(body)
            label = f"DGFIP liasse fiscale, {LIASSE_DONNEES} données"
            found.append((label, operation_id, grown, source + ", grown"))
    return found


def _contenders(
    operation_id: str, data_bytes: bytes, record: Any, model: Any
) -> dict[str, Callable[[], Any]]:
    access = _plain_access(operation_id)
    return {
        "json.loads": lambda: json.loads(data_bytes),
        "plain": lambda: access(json.loads(data_bytes)),
        "records": lambda: structure_lenient(json.loads(data_bytes), record),
        "pydantic": lambda: model.model_validate(json.loads(data_bytes)),
        "pydantic (json)": lambda: model.model_validate_json(data_bytes),
    }


def measure(rounds: int) -> list[dict[str, Any]]:
    """Per payload: medians in CPU microseconds, ratios to the plain parse and to json.loads."""
    results = []
    for label, operation_id, body, source in cases():
        record = get_endpoint(operation_id).record
        model = MODELS[operation_id]
        data = json.loads(body)["data"]
        data_bytes = json.dumps(data).encode()
        # Every contender must accept the payload before it is timed.
        structure(data, record)
        model.model_validate(data)
        model.model_validate_json(data_bytes)
        calls = max(20, int(2000 * 2000 / len(body)))
        contenders = _contenders(operation_id, data_bytes, record, model)
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for function in contenders.values():
            cpu_per_call(function, calls // 4)  # warm up
        for _ in range(rounds):
            for name, function in contenders.items():
                times[name].append(cpu_per_call(function, calls))
        results.append(
            {
                "label": label,
                "source": source,
                "bytes": len(data_bytes),
                "us": {name: median(values) for name, values in times.items()},
                "vs plain": {
                    name: paired_ratio(values, times["plain"]) for name, values in times.items()
                },
                "vs json.loads": {
                    name: paired_ratio(values, times["json.loads"])
                    for name, values in times.items()
                },
                "records vs pydantic": paired_ratio(times["records"], times["pydantic"]),
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    for row in measure(args.rounds):
        print(f"## {row['label']} ({row['bytes']:,} bytes, {row['source']})")
        for name, us in row["us"].items():
            print(
                f"  {name:16s} {us:9.1f} us   {row['vs plain'][name]:5.2f} x plain"
                f"   {row['vs json.loads'][name]:5.2f} x json.loads"
            )


if __name__ == "__main__":
    main()
