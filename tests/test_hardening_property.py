"""Every path and query parameter of the catalogue, fuzzed: only clean, validated values are sent.

Whatever a caller passes (text in any script, digits of other numeral systems,
huge numbers, None, lists, bytes...), a call either is refused locally with an
``InvalidParameterError`` (nothing sent, one ``refused`` audit record) or
reaches the transport with an ASCII request whose every parameter has the
shape its kind demands.
"""

from __future__ import annotations

import re
import urllib.parse
import warnings
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from apientreprise_async import (
    ApiEntrepriseError,
    AsyncClient,
    Governor,
    InvalidParameterError,
    Limits,
)
from apientreprise_async._catalogue import GROUP_LIMITS, Endpoint, IdKind, all_endpoints
from apientreprise_async.audit import AuditRecord
from apientreprise_async.backends import InMemoryBackend

from .conftest import RECIPIENT, TOKEN

ENDPOINTS = [e for e in all_endpoints() if e.path_params or e.query_params]
LIMITS = Limits(groups=dict.fromkeys(GROUP_LIMITS, 100_000), ip=100_000, period=1.0)

VALID: dict[IdKind, str] = {
    IdKind.SIREN: "418166096",
    IdKind.SIRET: "41816609600069",
    IdKind.RNA: "W751004076",
    IdKind.EORI: "FR41816609600069",
    IdKind.YEAR: "2023",
    IdKind.MONTH: "03",
    IdKind.SIREN_OR_RNA: "418166096",
    IdKind.SIRET_OR_RNA: "41816609600069",
    IdKind.SIRET_OR_EORI: "41816609600069",
    IdKind.SIREN_OR_SIRET_OR_RNA: "418166096",
    IdKind.TEXT: "10",
}
# What a sent value of each kind must look like (ASCII classes only).
SHAPE: dict[IdKind, re.Pattern[str]] = {
    IdKind.SIREN: re.compile(r"[0-9]{9}"),
    IdKind.SIRET: re.compile(r"[0-9]{14}"),
    IdKind.RNA: re.compile(r"W[0-9]{9}"),
    IdKind.EORI: re.compile(r"[A-Z]{2}[0-9A-Z]{1,15}"),
    IdKind.YEAR: re.compile(r"[0-9]{4}"),
    IdKind.MONTH: re.compile(r"(0[1-9]|1[0-2])"),
    IdKind.SIREN_OR_RNA: re.compile(r"[0-9]{9}|W[0-9]{9}"),
    IdKind.SIRET_OR_RNA: re.compile(r"[0-9]{14}|W[0-9]{9}"),
    IdKind.SIRET_OR_EORI: re.compile(r"[0-9]{14}|[A-Z]{2}[0-9A-Z]{1,15}"),
    IdKind.SIREN_OR_SIRET_OR_RNA: re.compile(r"[0-9]{9}|[0-9]{14}|W[0-9]{9}"),
    IdKind.TEXT: re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?"),
}
OTHER_DIGITS = "０１２３４５６７８９٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹०१२३४५६७८९"

HOSTILE: list[Any] = [
    None,
    "",
    "  ",
    "４１８１６６０９６",  # fullwidth
    "٤١٨١٦٦٠٩٦",  # Arabic-Indic
    "4" * 5000,
    10**5000,
    -418166096,
    418166096,
    4.18166096e8,
    True,
    b"418166096",
    ["418166096"],
    {"siren": "418166096"},
    "418166096\r\nX-Injected: 1",
    "418166096\x00",
    "../../admin",
    "41816609%36",
    "W75100407６",
    "fr41816609600069",
]


def values(kind: IdKind, choices: tuple[str, ...]) -> st.SearchStrategy[Any]:
    """Valid values and everything a careless or hostile caller could pass instead."""
    valid = st.sampled_from(choices) if choices else st.just(VALID[kind])
    digits = st.text(alphabet="0123456789" + OTHER_DIGITS, min_size=1, max_size=16)
    return st.one_of(
        valid,
        st.sampled_from(HOSTILE),
        digits,
        st.text(max_size=20),
        st.integers(),
        st.integers(min_value=10**30),
        st.floats(allow_nan=True),
        st.binary(max_size=12),
        st.lists(st.text(max_size=4), max_size=3),
        valid.map(lambda v: f" {v} "),
        valid.map(lambda v: v + "\u200b"),
    )


@st.composite
def calls(draw: st.DrawFn) -> tuple[Endpoint, dict[str, Any], dict[str, Any]]:
    endpoint = draw(st.sampled_from(ENDPOINTS))
    params: dict[str, Any] = {}
    for param in endpoint.path_params:
        params[param.name] = draw(values(param.kind, ()))
    for query in endpoint.query_params:
        if query.required or draw(st.booleans()):
            params[query.name] = draw(values(query.kind, query.choices))
    trace: dict[str, Any] = {}
    if endpoint.traceability and draw(st.booleans()):
        trace["recipient"] = draw(values(IdKind.SIRET, ()))
    if endpoint.traceability and draw(st.booleans()):
        trace["context"] = draw(st.one_of(st.text(max_size=300), st.sampled_from(HOSTILE)))
    if endpoint.traceability and draw(st.booleans()):
        trace["object"] = draw(st.one_of(st.text(max_size=60), st.sampled_from(HOSTILE)))
    return endpoint, params, trace


def check_sent(endpoint: Endpoint, request: httpx.Request) -> None:
    """The request is ASCII, and every parameter has its kind's shape."""
    raw = request.url.raw_path
    assert all(0x21 <= b <= 0x7E for b in raw), raw
    path = request.url.path
    pattern = re.escape(endpoint.path)
    for param in endpoint.path_params:
        pattern = pattern.replace(re.escape("{" + param.name + "}"), f"(?P<{param.name}>[^/]*)")
    found = re.fullmatch(pattern, path)
    assert found is not None, path
    for param in endpoint.path_params:
        assert SHAPE[param.kind].fullmatch(found[param.name]), (param.name, found[param.name])
    query = urllib.parse.parse_qsl(request.url.query.decode("ascii"), keep_blank_values=True)
    specs = {q.name: q for q in endpoint.query_params}
    for name, value in query:
        if name == "recipient":
            assert SHAPE[IdKind.SIRET].fullmatch(value), value
        elif name in ("context", "object"):
            assert value.strip()
            assert not any(c in value for c in "\r\n\x00\t\u200b")
        else:
            spec = specs[name]
            assert SHAPE[spec.kind].fullmatch(value), (name, value)
            assert not spec.choices or value in spec.choices


async def one_call(endpoint: Endpoint, params: dict[str, Any], trace: dict[str, Any]) -> str:
    """Make the call; check what was sent or that nothing was; say which."""
    sent: list[httpx.Request] = []
    audit: list[AuditRecord] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(404, json={"errors": [{"code": "01003", "title": "absent"}]})

    async with AsyncClient(
        TOKEN,
        transport=httpx.MockTransport(handle),
        governor=Governor(LIMITS, backend=InMemoryBackend()),
        recipient=RECIPIENT,
        context="fuzz",
        object="fuzz",
        check_maintenance=False,
        audit=audit.append,
    ) as client:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # v3 operations
                await client.call(endpoint.operation_id, **trace, **params)
        except InvalidParameterError:
            assert [] == sent
            assert ["refused"] == [r.outcome for r in audit]
            return "refused"
        except ApiEntrepriseError:
            pass
    assert 1 == len(sent)
    check_sent(endpoint, sent[0])
    return "sent"


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(calls())
def test_nothing_but_validated_values_reaches_the_transport(
    case: tuple[Endpoint, dict[str, Any], dict[str, Any]],
) -> None:
    event(anyio.run(one_call, *case))


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.operation_id for e in ENDPOINTS])
def test_every_parameter_of_every_operation_refuses_each_hostile_value(endpoint: Endpoint) -> None:
    """A sweep, not a sample: each hostile value in each parameter of each operation."""

    async def sweep() -> None:
        base = {p.name: VALID[p.kind] for p in endpoint.path_params}
        base.update(
            {q.name: (q.choices or ("10",))[0] for q in endpoint.query_params if q.required}
        )
        names = [p.name for p in endpoint.path_params] + [q.name for q in endpoint.query_params]
        assert "sent" == await one_call(endpoint, base, {})
        for name in names:
            for value in HOSTILE:
                await one_call(endpoint, {**base, name: value}, {})
        if endpoint.traceability:
            for name in ("recipient", "context", "object"):
                for value in HOSTILE:
                    await one_call(endpoint, base, {name: value})

    anyio.run(sweep)
