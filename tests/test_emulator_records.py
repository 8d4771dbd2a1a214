"""Every 200 of the emulator's built-in data structures into its operation's record."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any, get_origin

import pytest

from apientreprise_async import AsyncClient, Governor, Limits, NotFoundError, Response
from apientreprise_async._catalogue import GROUP_LIMITS, Endpoint, IdKind, all_endpoints
from apientreprise_async.backends import InMemoryBackend
from apientreprise_async.records import djepva
from apientreprise_async.testing import COMPANIES, Emulator

from .conftest import RECIPIENT, TOKEN

pytestmark = pytest.mark.anyio

# 2025-01-15 12:00 Paris: outside every maintenance window.
NOON = dt.datetime(2025, 1, 15, 11, 0, tzinfo=dt.UTC).timestamp()
#: High enough that neither the emulator nor the governor ever holds a call back.
PLENTY = 1_000_000

SIRENS = [c.siren for c in COMPANIES]
SIRETS = [e.siret for c in COMPANIES for e in c.establishments]
RNAS = [c.rna for c in COMPANIES if c.rna]
#: The built-in identifiers tried for each kind of path parameter.
VALUES: Mapping[IdKind, list[str]] = {
    IdKind.SIREN: SIRENS,
    IdKind.SIRET: SIRETS,
    IdKind.RNA: RNAS,
    IdKind.SIREN_OR_RNA: SIRENS + RNAS,
    IdKind.SIRET_OR_RNA: SIRETS + RNAS,
    IdKind.SIREN_OR_SIRET_OR_RNA: SIRENS + SIRETS + RNAS,
    IdKind.SIRET_OR_EORI: SIRETS,
    IdKind.YEAR: ["2023"],
    IdKind.MONTH: ["06"],
}
#: Operations the built-in data must answer (others may join them).
EXPECTED = {
    "api_entreprise_privileges",
    "api_entreprise_v3_insee_unites_legales",
    "api_entreprise_v4_insee_unites_legales",
    "api_entreprise_v4_insee_unites_legales_diffusables",
    "api_entreprise_v3_insee_sieges_unites_legales",
    "api_entreprise_v4_insee_sieges_unites_legales",
    "api_entreprise_v3_insee_etablissements",
    "api_entreprise_v4_insee_etablissements",
    "api_entreprise_v4_insee_etablissements_diffusables",
    "api_entreprise_v3_insee_adresses_etablissements",
    "api_entreprise_v3_insee_unites_legales_diffusables",
    "api_entreprise_v3_insee_sieges_diffusables_unites_legales",
    "api_entreprise_v4_insee_sieges_diffusables_unites_legales",
    "api_entreprise_v3_insee_etablissements_diffusables",
    "api_entreprise_v3_insee_adresses_etablissements_diffusables",
    "api_entreprise_v3_european_commission_vies",
    "api_entreprise_v3_dgfip_attestations_fiscales",
    "api_entreprise_v4_dgfip_attestations_fiscales",
    "api_entreprise_v3_acoss_attestations_sociales",
    "api_entreprise_v4_acoss_attestations_sociales",
    "api_entreprise_v4_mi_unites_legales",
    "api_entreprise_v4_mi_unites_legales_open_data",
}


def path_values(endpoint: Endpoint) -> Iterator[dict[str, str]]:
    """Every combination of built-in identifiers for the operation's path parameters."""
    names = [p.name for p in endpoint.path_params]
    for combination in itertools.product(*(VALUES[p.kind] for p in endpoint.path_params)):
        yield dict(zip(names, combination, strict=True))


@pytest.fixture
def emulator() -> Emulator:
    """An emulator at noon in Paris whose limits never get in the way."""
    emu = Emulator(start_epoch=NOON, ip_limit=PLENTY)
    emu.add_token(TOKEN, limits=dict.fromkeys(GROUP_LIMITS, PLENTY))
    return emu


async def call_or_none(
    client: AsyncClient, endpoint: Endpoint, values: Mapping[str, Any]
) -> Response[Any] | None:
    """The structured answer, or ``None`` when the built-in data has nothing (404)."""
    op = endpoint.operation_id
    expect = (
        pytest.warns(DeprecationWarning, match=op)
        if endpoint.deprecated
        else contextlib.nullcontext()
    )
    with expect:
        try:
            return await client.call(op, **values)
        except NotFoundError:
            return None


async def test_every_builtin_answer_structures(emulator: Emulator) -> None:
    """Each operation × built-in identifier answering 200 yields its record, no field left over."""
    governor = Governor(
        Limits(groups=dict.fromkeys(GROUP_LIMITS, PLENTY), ip=PLENTY),
        backend=InMemoryBackend(),
        wall_clock=emulator.epoch,
    )
    covered: dict[str, int] = {}
    async with AsyncClient(
        TOKEN,
        transport=emulator.transport(),
        governor=governor,
        recipient=RECIPIENT,
        context="tests",
        object="records",
        check_maintenance=False,
        strict=True,
    ) as client:
        for endpoint in all_endpoints():
            for values in path_values(endpoint):
                response = await call_or_none(client, endpoint, values)
                if response is None:
                    continue
                where = (endpoint.operation_id, values)
                assert 200 == response.http_status, where
                record = endpoint.record
                assert record is not None, where
                if get_origin(record) is tuple:
                    assert isinstance(response.data, tuple), where
                else:
                    assert isinstance(response.data, record), where
                    # Strict records: a field the record does not know would land here.
                    assert {} == response.data.extra, where
                covered[endpoint.operation_id] = covered.get(endpoint.operation_id, 0) + 1
    assert EXPECTED <= set(covered), sorted(EXPECTED - set(covered))
    assert len(covered) >= len(EXPECTED) == 22
    # The association answers by SIREN and by RNA, in full and as open data.
    assert 2 == covered["api_entreprise_v4_mi_unites_legales"]
    assert 2 == covered["api_entreprise_v4_mi_unites_legales_open_data"]


async def test_association_through_the_typed_resource(
    emulator: Emulator, tmp_path: pathlib.Path
) -> None:
    """``client.djepva`` returns the association and its public data from the emulator."""
    association = next(c for c in COMPANIES if c.rna)
    assert association.rna is not None
    async with AsyncClient(
        TOKEN,
        transport=emulator.transport(),
        governor=Governor(backend=InMemoryBackend(), wall_clock=emulator.epoch),
        recipient=RECIPIENT,
        context="tests",
        object="records",
        check_maintenance=False,
        strict=True,
    ) as client:
        full = await client.djepva.associations(siren_or_rna=association.rna)
        public = await client.djepva.open_data(siren_or_rna=association.siren)
        assert isinstance(full.data, djepva.Association)
        assert isinstance(public.data, djepva.AssociationOpenData)
        for data in (full.data, public.data):
            assert (association.rna, association.siren) == (data.rna, data.siren)
            assert association.siege.siret == data.siret_siege
            assert [e.siret for e in association.establishments] == [
                e.siret for e in data.etablissements
            ]
        # The full answer's documents are emulator PDFs the client can fetch.
        assert full.data.documents_rna
        saved = await client.download(full.data.documents_rna[0].url, tmp_path / "statuts.pdf")
        assert saved.read_bytes().startswith(b"%PDF-")
    # The open data leaves out people and documents.
    assert "documents_rna" not in public.raw["data"]
    assert "representants_legaux" not in public.raw["data"]["etablissements"][0]
