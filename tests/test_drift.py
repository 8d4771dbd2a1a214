"""Answers whose shape drifted still reach the caller: lenient by default, strict when asked.

The replay takes every 200 staging case of ../shared/api-entreprise/payloads
and drifts it the ways providers' payloads drift (a field nulled, a field
removed, an object where a scalar was documented, an unknown field added),
then checks what a caller relies on: no exception, the body kept as sent,
untouched fields read as before, the misfit named in ``problems``.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import pathlib
import random
from collections.abc import Iterator
from typing import Any

import attrs
import httpx
import pytest
import yaml

from apientreprise_async import (
    AsyncClient,
    Governor,
    Limits,
    OpenEnum,
    Timestamp,
    UnexpectedPayloadError,
    UnfitFieldError,
    get_endpoint,
)
from apientreprise_async import _client as _client_module
from apientreprise_async._catalogue import GROUP_LIMITS, Endpoint
from apientreprise_async._convert import structure_lenient, unstructure
from apientreprise_async.audit import AuditRecord
from apientreprise_async.backends import InMemoryBackend
from apientreprise_async.records import Record, dgfip, insee
from apientreprise_async.testing import COMPANIES, Emulator, Faults

from .conftest import RECIPIENT, TOKEN, shared_or_skip
from .test_records_staging import DUMMIES, _differences
from .test_records_staging import _call as _staging_call

pytestmark = pytest.mark.anyio
# Structuring does not depend on the event loop: the long replays run on asyncio only.
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

UL = "api_entreprise_v4_insee_unites_legales"
UNSET = object()
NEW_FIELD = "champ_ajoute_par_le_fournisseur"


# -- walking payloads and records -----------------------------------------------------


def _cases() -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(operation id, case name, params, body) of every 200 staging case."""
    shared = shared_or_skip()
    found = []
    for path in sorted((shared / "payloads").glob("*/*.y*ml")):
        case = yaml.safe_load(path.read_text("utf-8"))
        if case["status"] == 200:
            params = {k: str(v) for k, v in (case.get("params") or {}).items()}
            name = f"{path.parent.name}/{path.name}"
            found.append((path.parent.name, name, params, json.loads(case["payload"])))
    return found


Path = tuple[str | int, ...]


def _scalar_leaves(value: Any, record: Any, path: Path = ()) -> Iterator[Path]:
    """Paths of non-null scalars the record types as scalars (not inside free-form objects)."""
    if attrs.has(record):
        types = {f.name: f.type for f in attrs.fields(attrs.resolve_types(record))}
        for key, item in value.items():
            if key in types and key not in ("extra", "unfit"):
                yield from _scalar_leaves(item, _unwrap(types[key]), (*path, key))
    elif isinstance(value, list) and getattr(record, "__origin__", None) is tuple:
        for index, item in enumerate(value):
            yield from _scalar_leaves(item, _unwrap(record.__args__[0]), (*path, index))
    elif (
        value is not None
        and not isinstance(value, dict | list)
        and path
        and isinstance(
            path[-1],
            str,  # fields, not items of a list of scalars
        )
    ):
        yield path


def _unwrap(type_: Any) -> Any:
    args = [a for a in getattr(type_, "__args__", ()) if a is not type(None)]
    if type(None) in getattr(type_, "__args__", ()) and len(args) == 1:
        return args[0]
    return type_


def _read(record: Any, path: Path) -> Any:
    """What a caller reads at ``path`` of a record (UNSET when it cannot be read)."""
    value = record
    for step in path:
        if isinstance(step, int):
            value = value[step] if isinstance(value, tuple) and step < len(value) else UNSET
        else:
            value = getattr(value, step, UNSET)
        if value is UNSET:
            return UNSET
    return value


def _parent(body: dict[str, Any], path: Path) -> Any:
    node: Any = body["data"]
    for step in path[:-1]:
        node = node[step]
    return node


def _json_path(path: Path) -> str:
    return "$.data" + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in path)


def _drifts(name: str, body: dict[str, Any], record: Any) -> Iterator[tuple[str, Path, Any]]:
    """Three drifted bodies of one case (null, drop, object), each with an unknown field."""
    leaves = list(_scalar_leaves(body["data"], record))
    if not leaves:
        return
    pick = random.Random(name)
    for how in ("null", "drop", "object"):
        path = pick.choice(leaves)
        drifted = copy.deepcopy(body)
        parent = _parent(drifted, path)
        if how == "null":
            parent[path[-1]] = None
        elif how == "drop":
            del parent[path[-1]]
        else:
            parent[path[-1]] = {"valeur": parent[path[-1]], "source": "nouveau format"}
        if isinstance(drifted["data"], dict):
            drifted["data"][NEW_FIELD] = {"ajoute": True}
        elif drifted["data"] and isinstance(drifted["data"][0], dict):
            drifted["data"][0][NEW_FIELD] = 1
        yield how, path, drifted


def _client(body: dict[str, Any], **kw: Any) -> AsyncClient:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body, headers={"X-Request-ID": "req-drift"})

    limits = Limits(groups=dict.fromkeys(GROUP_LIMITS, 100_000), ip=1_000_000, period=1.0)
    return AsyncClient(
        token=TOKEN,
        recipient=RECIPIENT,
        context="tests",
        object="drift",
        transport=httpx.MockTransport(handle),
        limits=limits,
        check_maintenance=False,
        **kw,
    )


# -- the replay ----------------------------------------------------------------------


@asyncio_only
async def test_every_drifted_staging_answer_reaches_the_caller() -> None:
    """Default mode: 0 exceptions, raw kept, untouched fields as before, objects named."""
    drifted_count = 0
    failures: list[str] = []
    for op_id, name, params, body in _cases():
        endpoint = get_endpoint(op_id)
        async with _client(body) as client:
            before = ((await _staging_call(client, endpoint, params))[0]).data
        for how, path, drifted in _drifts(name, body, endpoint.record):
            drifted_count += 1
            where = f"{name} {how} {_json_path(path)}"
            async with _client(drifted) as client:
                try:
                    response = (await _staging_call(client, endpoint, params))[0]
                except Exception as exc:  # the point of the test: none may escape
                    failures.append(f"{where}: {type(exc).__name__}: {exc}")
                    continue
            if response.raw != drifted:
                failures.append(f"{where}: raw differs from the body")
            if _differences(drifted["data"], unstructure(response.data)):
                failures.append(f"{where}: the record does not give the body back")
            for leaf in _scalar_leaves(body["data"], endpoint.record):
                if leaf[: len(path)] != path and _read(response.data, leaf) != _read(before, leaf):
                    failures.append(f"{where}: untouched {_json_path(leaf)} reads differently")
            named = [p for p in response.problems if p.endswith("@ " + _json_path(path))]
            if how == "object" and not named:
                failures.append(f"{where}: not in problems {response.problems}")
            if how == "object" and _read(response.data, path) is not UNSET:
                failures.append(f"{where}: an object reads as {_read(response.data, path)!r}")
    assert [] == failures
    assert drifted_count >= 3 * 90  # every case drifted three ways (98 cases today)


@asyncio_only
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_strict_raises_with_the_whole_answer() -> None:
    """strict=True (client or call): UnexpectedPayloadError whose .response has everything."""
    for op_id, name, _params, body in _cases()[::7]:
        endpoint = get_endpoint(op_id)
        how, path, drifted = list(_drifts(name, body, endpoint.record))[-1]
        assert "object" == how
        for client_kw, call_kw in (({"strict": True}, {}), ({}, {"strict": True})):
            async with _client(drifted, **client_kw) as client:
                with pytest.raises(UnexpectedPayloadError) as info:
                    await client.call(op_id, **call_kw, **_values(endpoint))
            error = info.value
            assert error.response is not None, name
            assert (drifted, 200, "req-drift") == (
                error.response.raw,
                error.response.http_status,
                error.response.request_id,
            )
            assert error.problems == error.response.problems
            assert any(p.endswith("@ " + _json_path(path)) for p in error.problems)


def _values(endpoint: Endpoint) -> dict[str, Any]:
    return {p.name: DUMMIES.get(p.kind, "x") for p in endpoint.path_params}


# -- what a lenient record holds -------------------------------------------------------


def _unite_legale() -> dict[str, Any]:
    shared = shared_or_skip()
    case = shared / "payloads" / UL / "personne_morale.yaml"
    return json.loads(yaml.safe_load(case.read_text("utf-8"))["payload"])


def test_a_misfit_is_kept_and_reading_it_says_why() -> None:
    """The value as sent is in .unfit; reading raises UnfitFieldError, getattr defaults work."""
    data = _unite_legale()["data"]
    data["forme_juridique"]["code"] = {"code": "5710", "version": 2}
    data["siren"] = None
    del data["type"]
    record, problems = structure_lenient(data, insee.UniteLegale)
    assert [
        "expected a string, got null @ $.data.siren",
        "required field missing @ $.data.type",
        "expected a string, got dict {'code': '5710', 'version': 2} @ $.data.forme_juridique.code",
    ] == list(problems)
    assert {"code": "5710", "version": 2} == record.forme_juridique.unfit["code"]
    with pytest.raises(UnfitFieldError, match=r"FormeJuridique.code was an object") as info:
        _ = record.forme_juridique.code
    assert isinstance(info.value, AttributeError)
    assert {"code": "5710", "version": 2} == info.value.value
    assert "absent" == getattr(record, "type", "absent")
    assert not hasattr(record, "siren")
    assert data["forme_juridique"]["libelle"] == record.forme_juridique.libelle
    assert "siren=<unfit>" in repr(record)
    assert "type=<absent>" in repr(record)
    assert data == unstructure(record)  # nothing lost


def test_a_nullable_field_left_out_reads_none() -> None:
    """A required but nullable field that is absent reads None (and is named as a problem)."""
    data = _unite_legale()["data"]
    del data["rna"]
    record, problems = structure_lenient(data, insee.UniteLegale)
    assert record.rna is None
    assert ("required field missing @ $.data.rna",) == problems
    assert data == unstructure(record)  # nothing lost


def test_data_that_is_not_an_object_gives_an_empty_record() -> None:
    """``data: null`` still returns a record of the right class; every field reads as absent."""
    record, problems = structure_lenient(None, insee.UniteLegale)
    assert isinstance(record, insee.UniteLegale)
    assert ("expected an object, got null @ $.data",) == problems
    assert getattr(record, "siren", None) is None


# -- downstream: logs, stats, audit, batch, proxy ---------------------------------------


async def test_logged_once_per_path_counted_and_audited(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WARNING once per (operation, path); stats count answers; audit keeps 200 + request id."""
    monkeypatch.setattr(_client_module, "_logged_drift", set())  # as in a fresh process
    body = _unite_legale()
    body["data"]["categorie_entreprise"] = {"code": "PME", "annee": 2023}
    audited: list[AuditRecord] = []
    caplog.set_level(logging.WARNING, logger="apientreprise_async")
    async with _client(body, audit=audited.append) as client:
        for _ in range(3):
            response = await client.call(UL, siren="775672272", coalesce=False)
            assert body == response.raw
        stats = client.stats()
    drift_logs = [r for r in caplog.records if "does not fit its record" in r.getMessage()]
    assert 1 == len(drift_logs)
    assert "$.data.categorie_entreprise" in drift_logs[0].getMessage()
    assert "PME" not in drift_logs[0].getMessage()  # the API's data stays out of logs
    assert 3 == stats.unfit_answers
    assert {f"{UL} $.data.categorie_entreprise": 3} == dict(stats.unfit_paths)
    assert [(200, "req-drift", "ok")] * 3 == [
        (r.http_status, r.request_id, r.outcome) for r in audited
    ]
    assert ("$.data.categorie_entreprise",) == audited[0].unfit_paths


def _drifting_emulator() -> Emulator:
    """An emulator whose 200 answers carry an object where ``siren`` is documented.

    Seed 5 drifts its first answers the ``"object"`` way; the tests check it.
    """
    emulator = Emulator(faults=Faults(share_drifted=1.0), seed=5)
    emulator.add_token(TOKEN)
    return emulator


async def test_batch_line_holds_data_and_problems_and_a_rerun_skips_it(
    tmp_path: pathlib.Path,
) -> None:
    """The output line is a success with the data as sent; resuming does not send again."""
    emulator = _drifting_emulator()
    output = tmp_path / "out.jsonl"
    sirens = [c.siren for c in COMPANIES[:2]]
    for _ in range(2):
        async with (
            AsyncClient(
                TOKEN,
                transport=emulator.transport(),
                governor=Governor(Limits(period=emulator.period), backend=InMemoryBackend()),
                recipient=RECIPIENT,
                context="tests",
                object="batch",
            ) as client,
            client.batch(UL, sirens, output=output) as outcomes,
        ):
            assert all([o.ok async for o in outcomes])
    assert [("object", "$.data.siren")] * 2 == [r.drift for r in emulator.requests]
    # The rerun found both lines done: it sent nothing.
    lines = [json.loads(line) for line in output.read_text("utf-8").splitlines()]
    assert ["ok", "ok"] == [line["status"] for line in lines]
    for line in lines:
        assert {"valeur": line["input"], "source": "emulateur"} == line["data"]["siren"]
        assert [p for p in line["problems"] if p.endswith("@ $.data.siren")]


async def test_proxy_answers_200_with_the_data() -> None:
    """The FastAPI proxy gives the browser the data the server sent, drifted or not."""
    pytest.importorskip("fastapi")
    from fastapi import FastAPI

    from apientreprise_async.fastapi import (
        ApiEntrepriseSettings,
        Traceability,
        install_exception_handlers,
        make_lifespan,
        make_proxy_router,
    )

    emulator = _drifting_emulator()
    settings = ApiEntrepriseSettings(token=TOKEN, recipient=RECIPIENT, context="defaut")
    app = FastAPI(
        lifespan=make_lifespan(
            settings,
            transport=emulator.transport(),
            governor=Governor(backend=InMemoryBackend()),
            check_maintenance=False,
        )
    )
    install_exception_handlers(app)

    async def tracing() -> Traceability:
        return Traceability(context="Instruction", object="dossier-1")

    app.include_router(make_proxy_router([UL], tracing=tracing), prefix="/p")
    siren = COMPANIES[0].siren
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as browser:
            answer = await browser.get(f"/p/v4/insee/sirene/unites_legales/{siren}")
    assert 200 == answer.status_code
    assert [("object", "$.data.siren")] == [r.drift for r in emulator.requests]
    data = answer.json()["data"]
    assert {"valeur": siren, "source": "emulateur"} == data["siren"]
    assert COMPANIES[0].raison_sociale == data["personne_morale_attributs"]["raison_sociale"]


def test_records_used_here_are_records() -> None:
    """Guard: the walker above relies on records being attrs classes."""
    assert attrs.has(insee.UniteLegale)
    assert issubclass(insee.UniteLegale, Record)


# -- records say what they hold ----------------------------------------------------------


def _values_in(value: Any) -> Iterator[Any]:
    """Every value a record holds, nested records and tuples walked."""
    if isinstance(value, Record):
        for field in attrs.fields(type(value)):
            if field.name not in ("extra", "unfit", "_absent"):
                yield from _values_in(getattr(value, field.name, None))
    elif isinstance(value, tuple):
        for item in value:
            yield from _values_in(item)
    else:
        yield value


def test_staging_values_of_closed_sets_are_documented() -> None:
    """Every staging value of an enumerated field is one the OpenAPI file lists."""
    seen: set[type[OpenEnum]] = set()
    unknown = []
    for op_id, name, _params, body in _cases():
        record, problems = structure_lenient(body["data"], get_endpoint(op_id).record)
        assert () == problems, name
        for value in _values_in(record):
            if isinstance(value, OpenEnum):
                seen.add(type(value))
                if not value.known:
                    unknown.append(f"{name}: {type(value).__name__} {value.value!r}")
    assert [] == unknown
    assert len(seen) >= 10


def test_an_unknown_value_of_a_closed_set_is_accepted() -> None:
    """A value the OpenAPI file does not list is a member too, marked unknown; no problem."""
    data = _unite_legale()["data"]
    data["etat_administratif"] = "S"  # say a new "suspended" state
    data["categorie_entreprise"] = "TPE"
    record, problems = structure_lenient(data, insee.UniteLegale)
    assert () == problems
    assert isinstance(record.etat_administratif, insee.UniteLegaleEtatAdministratif)
    assert "S" == record.etat_administratif
    assert not record.etat_administratif.known
    assert insee.UniteLegaleEtatAdministratif("S") is record.etat_administratif  # one member
    assert record.categorie_entreprise is not None
    assert ("TPE", False) == (record.categorie_entreprise.value, record.categorie_entreprise.known)
    assert insee.UniteLegaleEtatAdministratif.A.known
    assert "S" not in [m.value for m in insee.UniteLegaleEtatAdministratif]
    assert data == unstructure(record)
    assert json.loads(json.dumps(unstructure(record))) == data


def test_epoch_dates_read_as_datetimes_and_iso_dates_as_dates() -> None:
    """INSEE's epoch numbers stay integers and read as datetimes; documented dates are dates."""
    data = _unite_legale()["data"]
    record, _ = structure_lenient(data, insee.UniteLegale)
    created = record.date_creation
    assert isinstance(created, Timestamp)
    assert data["date_creation"] == created
    assert dt.datetime.fromtimestamp(data["date_creation"], dt.UTC) == created.datetime
    assert created.datetime.tzinfo is not None
    assert isinstance(created.date, dt.date)
    # A liasse's declaration date (documented by a date example) is a date, not a string.
    declaration = attrs.fields_dict(attrs.resolve_types(dgfip.Declaration))["date_declaration"]
    assert declaration.type is dt.date


def test_records_with_a_misfit_compare_without_raising() -> None:
    """== works on lenient records: equal payloads are equal, a misfit makes them differ."""
    data = _unite_legale()["data"]
    fitting, _ = structure_lenient(data, insee.UniteLegale)
    again, _ = structure_lenient(copy.deepcopy(data), insee.UniteLegale)
    drifted, problems = structure_lenient({**data, "siren": {"x": 1}}, insee.UniteLegale)
    other, _ = structure_lenient({**data, "siren": {"x": 2}}, insee.UniteLegale)
    assert problems
    assert fitting == again
    assert fitting != drifted
    assert drifted == structure_lenient({**data, "siren": {"x": 1}}, insee.UniteLegale)[0]
    assert drifted != other  # the values as sent differ


async def test_a_refused_document_carries_what_was_received(tmp_path: pathlib.Path) -> None:
    """A wrong content type: the UnexpectedPayloadError holds status, headers and small body."""
    page = b"<html><body>Maintenance en cours</body></html>"

    def handle(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Type": "text/html; charset=utf-8", "X-Request-ID": "req-doc"}
        return httpx.Response(200, content=page, headers=headers)

    async with AsyncClient(TOKEN, transport=httpx.MockTransport(handle)) as client:
        with pytest.raises(UnexpectedPayloadError, match="text/html") as info:
            await client.download("https://entreprise.api.gouv.fr/files/a.pdf", tmp_path / "a.pdf")
    received = info.value.response
    assert received is not None
    assert (200, "req-doc", page.decode()) == (
        received.http_status,
        received.request_id,
        received.raw,
    )
    assert "text/html; charset=utf-8" == received.headers["content-type"]
    assert not (tmp_path / "a.pdf").exists()
