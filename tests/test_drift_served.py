"""Drifted payloads where they broke: the emulator's fault, the CLI as subprocesses, a real proxy.

``Faults(share_drifted=...)`` makes the emulator drift answers the ways providers'
payloads drift. The tests below check the fault itself, then serve it on loopback
and run the ``apientreprise`` command against it as a user would, and put the
FastAPI proxy in front of it under a real uvicorn.
"""

from __future__ import annotations

import pathlib
import re
import warnings
from collections import Counter
from typing import Any

import httpx
import pytest

from apientreprise_async import AsyncClient, Governor, Limits, NotFoundError, get_endpoint
from apientreprise_async._catalogue import GROUP_LIMITS, all_endpoints
from apientreprise_async.audit import AuditRecord
from apientreprise_async.backends import InMemoryBackend
from apientreprise_async.testing import COMPANIES, Emulator, Faults, RecordedRequest

from .conftest import RECIPIENT, TOKEN, shared_or_skip
from .test_cli import cli, emulator_process, env, lines_of
from .test_drift import NEW_FIELD
from .test_drift import _cases as staging_cases
from .test_emulator_records import NOON, PLENTY, path_values
from .test_records_staging import _call as staging_call

pytestmark = pytest.mark.anyio
# What is proven here is the path through sockets and processes, not the event loop.
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

UL = "api_entreprise_v4_insee_unites_legales"
SIRENS = [c.siren for c in COMPANIES[:3]]
UNKNOWN_SIREN = "418166096"
TRACE = {"recipient": RECIPIENT, "context": "tests", "object": "drift"}


def _emulator(share: float, seed: int = 0) -> Emulator:
    emulator = Emulator(
        faults=Faults(share_drifted=share), seed=seed, start_epoch=NOON, ip_limit=PLENTY
    )
    emulator.add_token(TOKEN, limits=dict.fromkeys(GROUP_LIMITS, PLENTY))
    return emulator


def _client(emulator: Emulator) -> AsyncClient:
    """A client to ``emulator`` in process whose governor never holds a call back."""
    governor = Governor(
        Limits(groups=dict.fromkeys(GROUP_LIMITS, PLENTY), ip=PLENTY),
        backend=InMemoryBackend(),
        wall_clock=emulator.epoch,
    )
    return AsyncClient(
        TOKEN, transport=emulator.transport(), governor=governor, check_maintenance=False, **TRACE
    )


async def _get_all(emulator: Emulator, paths: list[str]) -> list[httpx.Response]:
    """Plain GETs (no library client in between), one after the other."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        transport=emulator.transport(), base_url="http://emulator.test", headers=headers
    ) as http:
        return [await http.get(path, params=TRACE) for path in paths]


def _undo(body: Any, drift: tuple[str, str], sent: Any) -> Any:
    """``body`` with the drift at ``drift``'s path put back as ``sent`` had it."""
    how, path = drift
    match = re.fullmatch(r"\$\.data(\[0\])?\.(\w+)", path)
    assert match is not None, path
    target = body["data"][0] if match[1] else body["data"]
    original = sent["data"][0] if match[1] else sent["data"]
    name = match[2]
    assert target.pop(NEW_FIELD) == {"ajoute": True}
    if how == "removed":
        assert name not in target
    elif how == "null":
        assert target[name] is None
    else:
        assert {"valeur": original[name], "source": "emulateur"} == target[name]
    target[name] = original[name]
    return body


# -- the fault itself ------------------------------------------------------------------


@asyncio_only
async def test_share_0_never_drifts_share_1_always_and_errors_stay_untouched() -> None:
    """Same seed: share 0 answers as if no fault; share 1 drifts every 200 and only those."""
    paths = [f"/v4/insee/sirene/unites_legales/{s}" for s in [*SIRENS, UNKNOWN_SIREN] * 3]
    plain = await _get_all(_emulator(0.0), paths)
    drifting = _emulator(1.0)
    drifted = await _get_all(drifting, paths)
    assert [200, 200, 200, 404] * 3 == [r.status_code for r in plain]
    assert [r.status_code for r in plain] == [r.status_code for r in drifted]
    kinds = set()
    for sent, got, seen in zip(plain, drifted, drifting.requests, strict=True):
        assert (got.headers["x-request-id"], got.status_code) == (seen.request_id, seen.status)
        if sent.status_code != 200:
            assert seen.drift is None
            assert sent.content == got.content  # an error answer is never drifted
            continue
        assert seen.drift is not None
        kinds.add(seen.drift[0])
        assert "$.data.siren" == seen.drift[1]  # the first field the record declares
        assert sent.json() == _undo(got.json(), seen.drift, sent.json())
        assert got.headers["content-length"] == str(len(got.content))
    assert {"null", "removed", "object"} == kinds
    assert all(r.drift is None for r in _emulator(0.0).requests)


@asyncio_only
async def test_drift_is_reproducible_from_the_seed() -> None:
    """Two runs with one seed drift the same answers the same way; another seed differs."""
    paths = [f"/v4/insee/sirene/unites_legales/{s}" for s in SIRENS * 4]

    async def run(share: float, seed: int) -> list[tuple[RecordedRequest, bytes]]:
        emulator = _emulator(share, seed)
        answers = await _get_all(emulator, paths)
        return list(zip(emulator.requests, [a.content for a in answers], strict=True))

    first, again, other = await run(0.5, 7), await run(0.5, 7), await run(0.5, 8)
    assert [(r.drift, body) for r, body in first] == [(r.drift, body) for r, body in again]
    assert [r.drift for r, _ in first] != [r.drift for r, _ in other]
    drifted = [r.drift for r, _ in first if r.drift is not None]
    assert 0 < len(drifted) < len(paths)  # a share of one half drifts some, not all


@asyncio_only
async def test_every_builtin_operation_drifts_visibly() -> None:
    """Each built-in 200 drifts; the client names the path, and always for an object."""
    emulator = _emulator(1.0, seed=3)
    seen: dict[str, tuple[str, str]] = {}
    async with _client(emulator) as client:
        for endpoint in all_endpoints():
            if endpoint.operation_id == "api_entreprise_privileges":
                continue
            for values in path_values(endpoint):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", DeprecationWarning)
                        response = await client.call(endpoint.operation_id, **values)
                except NotFoundError:
                    continue
                drift = emulator.requests[-1].drift
                assert drift is not None, endpoint.operation_id
                named = [p for p in response.problems if p.endswith(f"@ {drift[1]}")]
                if drift[0] == "object":
                    assert named, (drift, response.problems)
                seen[endpoint.operation_id] = drift
                break
    assert len(seen) >= 20
    assert {"null", "removed", "object"} == {how for how, _ in seen.values()}


@asyncio_only
async def test_every_staging_answer_drifts_and_an_object_is_always_named() -> None:
    """Over the official staging cases: each 200 drifts, and the client names every object."""
    emulator = Emulator.from_staging_cases(
        shared_or_skip() / "payloads",
        faults=Faults(share_drifted=1.0),
        seed=1,
        start_epoch=NOON,
        ip_limit=PLENTY,
    )
    emulator.add_token(TOKEN, limits=dict.fromkeys(GROUP_LIMITS, PLENTY))
    hows: Counter[str] = Counter()
    unnamed = []
    async with _client(emulator) as client:
        for op_id, name, params, _ in staging_cases():
            try:
                response = (await staging_call(client, get_endpoint(op_id), params))[0]
            except NotFoundError:
                continue  # a case whose parameters the client renames: no case matches
            drift = emulator.requests[-1].drift
            assert drift is not None, name
            hows[drift[0]] += 1
            if not [p for p in response.problems if p.endswith(f"@ {drift[1]}")]:
                unnamed.append((name, drift))
    assert sum(hows.values()) >= 90
    assert min(hows.values()) >= 20, hows
    assert [] == [(name, drift) for name, drift in unnamed if drift[0] == "object"]
    assert len(unnamed) <= sum(hows.values()) // 10  # only nullable or optional fields


# -- the CLI as subprocesses --------------------------------------------------------------


def _summary(stdout: str) -> dict[str, str]:
    found = (re.match(r"\s*(.+?)\s{2,}(\S+)\s*$", line) for line in stdout.splitlines())
    return {row[1]: row[2] for row in found if row}


def test_cli_batch_keeps_drifted_data_and_a_rerun_sends_nothing(tmp_path: pathlib.Path) -> None:
    """Emulator and batch as processes: ok lines with data and problems; resume skips them."""
    source = tmp_path / "in.txt"
    source.write_text("\n".join(SIRENS) + "\n", "utf-8")
    out = tmp_path / "out.jsonl"
    args = ["batch", UL, "--input", str(source), "--output", str(out)]
    # Seed 8: the three calls drift three different ways, whatever order they leave in.
    with emulator_process("--share-drifted", "1", "--seed", "8", environ=env()) as url:
        done = cli(*args, environ=env(url))
        assert 0 == done.returncode, done.stderr
        written = out.read_bytes()
        again = cli(*args, environ=env(url))
    assert "Traceback" not in done.stderr
    summary = _summary(done.stdout)
    assert ("3", "3", "3") == (
        summary["found"],
        summary["not fitting their record (see problems)"],
        summary["calls sent"],
    )
    lines = lines_of(out)
    forms: set[Any] = set()
    assert sorted(SIRENS) == sorted(line["input"] for line in lines)
    for line in lines:
        assert ("ok", 200) == (line["status"], line["http_status"])
        data = line["data"]
        assert {"ajoute": True} == data[NEW_FIELD]  # the data as the server sent it
        company = next(c for c in COMPANIES if c.siren == line["input"])
        assert company.raison_sociale == data["personne_morale_attributs"]["raison_sociale"]
        siren = data.get("siren", "removed")
        forms.add("object" if siren == {"valeur": line["input"], "source": "emulateur"} else siren)
        assert [p for p in line["problems"] if p.endswith("@ $.data.siren")], line["problems"]
    assert {None, "removed", "object"} == forms
    # The rerun: every input already has its line, nothing is sent or written again.
    assert 0 == again.returncode, again.stderr
    resumed = _summary(again.stdout)
    assert ("3", "0", "0") == (
        resumed["skipped (already in the output)"],
        resumed["inputs done"],
        resumed["calls sent"],
    )
    assert written == out.read_bytes()


# -- the FastAPI proxy under uvicorn ------------------------------------------------------


@asyncio_only
async def test_proxy_under_uvicorn_answers_200_with_drifted_data() -> None:
    """Browser -> uvicorn proxy -> emulator drifting every answer: 200, data, audit keeps ids."""
    pytest.importorskip("fastapi")
    from fastapi import FastAPI

    from apientreprise_async.fastapi import (
        ApiEntrepriseSettings,
        install_exception_handlers,
        make_lifespan,
        make_proxy_router,
    )

    from .test_fastapi import tracing
    from .test_fastapi_server import serve

    emulator = Emulator(faults=Faults(share_drifted=1.0), seed=2)  # seed 2: one of each way
    emulator.add_token(TOKEN)
    audited: list[AuditRecord] = []
    with emulator.serve(port=0) as upstream:
        settings = ApiEntrepriseSettings(
            token=TOKEN, base_url=upstream, recipient=RECIPIENT, context="serveur"
        )
        app = FastAPI(
            lifespan=make_lifespan(
                settings,
                governor=Governor(backend=InMemoryBackend()),
                check_maintenance=False,
                audit=audited.append,
            )
        )
        install_exception_handlers(app)
        app.include_router(make_proxy_router([UL], tracing=tracing), prefix="/p")
        alice = {"X-User": "alice"}  # the example's tracing wants a signed-in user
        async with serve(app) as url, httpx.AsyncClient(base_url=url) as browser:
            answers = [
                await browser.get(f"/p/v4/insee/sirene/unites_legales/{siren}", headers=alice)
                for siren in SIRENS
            ]
    assert [200] * 3 == [a.status_code for a in answers], [a.text for a in answers]
    assert [200] * 3 == [r.status for r in emulator.requests]
    hows = set()
    for company, answer, sent in zip(COMPANIES[:3], answers, emulator.requests, strict=True):
        assert sent.drift is not None
        how, path = sent.drift
        hows.add(how)
        siren = company.siren
        data = answer.json()["data"]
        assert {"ajoute": True} == data[NEW_FIELD]
        assert company.raison_sociale == data["personne_morale_attributs"]["raison_sociale"]
        expected = {"null": None, "removed": "absent", "object": {"valeur": siren}}[how]
        got = data.get("siren", "absent")
        assert expected == ({"valeur": got["valeur"]} if isinstance(got, dict) else got)
        assert "$.data.siren" == path
    assert {"null", "removed", "object"} == hows
    assert [(200, "ok", r.request_id, ("$.data.siren",)) for r in emulator.requests] == [
        (a.http_status, a.outcome, a.request_id, a.unfit_paths) for a in audited
    ]
