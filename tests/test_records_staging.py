"""Acceptance on the staging cases of ../shared/api-entreprise/payloads (skipped without them).

Every case is served to an ``AsyncClient`` through ``httpx.MockTransport``:
a 200 must structure into its operation's record and round-trip without
losing a field; any other status must raise the exception its status maps to,
with the case's error codes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from apientreprise_async import (
    AsyncClient,
    InvalidParameterError,
    Limits,
    NotFoundError,
    ValidationError,
    get_endpoint,
)
from apientreprise_async._catalogue import GROUP_LIMITS, Endpoint, IdKind
from apientreprise_async._convert import unstructure
from apientreprise_async._errors import ApiError

from .conftest import RECIPIENT, TOKEN, shared_or_skip

pytestmark = pytest.mark.anyio

DUMMIES = {
    IdKind.SIREN: "418166096",
    IdKind.SIRET: "41816609600051",
    IdKind.YEAR: "2023",
    IdKind.MONTH: "1",
    IdKind.RNA: "W751004076",
    IdKind.SIREN_OR_RNA: "418166096",
    IdKind.SIRET_OR_RNA: "41816609600051",
    IdKind.SIRET_OR_EORI: "41816609600051",
    IdKind.SIREN_OR_SIRET_OR_RNA: "418166096",
}
EXPECTED = {404: NotFoundError, 422: ValidationError}


def _cases() -> list[tuple[str, pathlib.Path, dict[str, Any]]]:
    shared = shared_or_skip()
    found = []
    for path in sorted((shared / "payloads").glob("*/*.y*ml")):
        found.append((path.parent.name, path, yaml.safe_load(path.read_text("utf-8"))))
    return found


def _differences(sent: Any, back: Any, where: str = "$") -> list[str]:
    """Where ``back`` differs from ``sent``; ISO timestamps compare as instants."""
    if isinstance(sent, dict) and isinstance(back, dict):
        if sent.keys() != back.keys():
            return [f"{where}: keys {sorted(sent.keys() ^ back.keys())}"]
        return [d for k in sent for d in _differences(sent[k], back[k], f"{where}.{k}")]
    if isinstance(sent, list) and isinstance(back, list):
        if len(sent) != len(back):
            return [f"{where}: {len(sent)} items became {len(back)}"]
        return [
            d
            for i, (a, b) in enumerate(zip(sent, back, strict=True))
            for d in _differences(a, b, f"{where}[{i}]")
        ]
    if type(sent) is type(back) and sent == back:
        return []
    if isinstance(sent, str) and isinstance(back, str):
        with contextlib.suppress(ValueError):
            if dt.datetime.fromisoformat(sent) == dt.datetime.fromisoformat(back):
                return []
    return [f"{where}: {sent!r} became {back!r}"]


def _client(body: dict[str, Any], status: int) -> AsyncClient:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    # Roomy limits: the governor is not under test here.
    limits = Limits(groups=dict.fromkeys(GROUP_LIMITS, 100_000), ip=1_000_000, period=1.0)
    return AsyncClient(
        token=TOKEN,
        recipient=RECIPIENT,
        context="acceptance",
        object="staging-cases",
        transport=httpx.MockTransport(handle),
        limits=limits,
        check_maintenance=False,
        strict=True,  # drift between the records and the OpenAPI file fails here
    )


@contextlib.contextmanager
def _deprecation(endpoint: Endpoint) -> Iterator[None]:
    if endpoint.deprecated:
        with pytest.warns(DeprecationWarning, match=endpoint.operation_id):
            yield
    else:
        yield


async def _call(
    client: AsyncClient, endpoint: Endpoint, params: dict[str, Any]
) -> tuple[Any, bool]:
    """Call with the case's parameters, or with valid dummies when they are refused locally."""
    try:
        with _deprecation(endpoint):
            return await client.call(endpoint.operation_id, **params), False
    except InvalidParameterError:
        dummies = {p.name: DUMMIES.get(p.kind, "x") for p in endpoint.path_params}
        with _deprecation(endpoint):
            return await client.call(endpoint.operation_id, **dummies), True


async def test_every_staging_case(capsys: pytest.CaptureFixture[str]) -> None:
    """200 cases structure and round-trip; error cases raise their mapped exception with codes."""
    cases = _cases()
    counts = {"structured": 0, "round_tripped": 0, "errors_mapped": 0, "refused_locally": 0}
    failures: list[str] = []
    for op_id, path, case in cases:
        endpoint = get_endpoint(op_id)
        body = json.loads(case["payload"])
        params = {k: str(v) for k, v in (case.get("params") or {}).items()}
        client = _client(body, case["status"])
        name = f"{op_id}/{path.name}"
        async with client:
            if case["status"] == 200:
                response, refused = await _call(client, endpoint, params)
                counts["structured"] += 1
                counts["refused_locally"] += refused
                differences = _differences(body["data"], unstructure(response.data))
                if differences:
                    failures.append(f"{name}: {differences[:3]}")
                else:
                    counts["round_tripped"] += 1
                continue
            try:
                await _call(client, endpoint, params)
            except ApiError as exc:
                expected = EXPECTED.get(case["status"], ApiError)
                codes = tuple(e["code"] for e in body["errors"])
                if (
                    isinstance(exc, expected)
                    and codes == exc.codes
                    and exc.http_status == case["status"]
                ):
                    counts["errors_mapped"] += 1
                else:
                    failures.append(f"{name}: {type(exc).__name__} {exc.codes}")
            else:
                failures.append(f"{name}: no exception for status {case['status']}")
    oks = sum(1 for _, _, c in cases if c["status"] == 200)
    with capsys.disabled():
        print(
            f"\nstaging cases: {len(cases)} ({oks} x 200, {len(cases) - oks} errors); "
            + ", ".join(f"{k}={v}" for k, v in counts.items())
        )
    assert [] == failures
    assert oks == counts["structured"] == counts["round_tripped"]
    assert len(cases) - oks == counts["errors_mapped"]
