"""Records and the converter, on examples written for this project (no ../shared needed)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apientreprise_async import UnexpectedPayloadError, all_endpoints, records
from apientreprise_async._convert import structure, unstructure
from apientreprise_async.records import dgfip, infogreffe, insee, urssaf

from .record_examples import (
    ATTESTATION_FISCALE,
    ATTESTATION_VIGILANCE,
    MANDATAIRES_SOCIAUX,
    UNITE_LEGALE,
    example_data,
    example_payload,
)


def test_unite_legale_nested_fields_are_typed() -> None:
    """A v4 legal unit reads with nested records and native types."""
    unite = structure(UNITE_LEGALE, insee.UniteLegale)
    assert "COOPERATIVE DES TESTS" == unite.personne_morale_attributs.raison_sociale
    assert "62.01Z" == unite.activite_principale.code
    assert 20 == unite.tranche_effectif_salarie.de
    assert unite.rna is None
    assert UNITE_LEGALE == unstructure(unite)


def test_dates_become_dates() -> None:
    """format: date fields are datetime.date, and go back as ISO strings."""
    attestation = structure(ATTESTATION_VIGILANCE, urssaf.AttestationVigilance)
    assert dt.date(2024, 10, 31) == attestation.date_fin_validite
    assert "ok" == attestation.entity_status.code
    fiscale = structure(ATTESTATION_FISCALE, dgfip.AttestationFiscale)
    assert dt.date(2024, 4, 30) == fiscale.date_periode_analysee
    assert ATTESTATION_FISCALE == unstructure(fiscale)


def test_timestamps_become_datetimes() -> None:
    """date-time fields are aware datetimes; dates sent with a time keep it."""
    from apientreprise_async.records import djepva

    payload = {**example_payload(djepva.DocumentRna), "date_depot": "2024-01-05T09:30:00.000+01:00"}
    document = structure(payload, djepva.DocumentRna)
    assert dt.datetime(2024, 1, 5, 8, 30, tzinfo=dt.UTC) == document.date_depot
    assert "2024-01-05T09:30:00+01:00" == unstructure(document)["date_depot"]


def test_list_answers_keep_their_items_links_and_meta() -> None:
    """A list answer is a tuple of items, each with data, links and meta."""
    items = structure(MANDATAIRES_SOCIAUX, tuple[infogreffe.MandataireSocialItem, ...])
    assert 2 == len(items)
    assert "MARTIN" == items[0].data.nom
    assert dt.date(1980, 2, 29) == items[0].data.date_naissance  # documented by a date example
    assert "AUDIT EXEMPLE" == items[1].data.raison_sociale
    assert MANDATAIRES_SOCIAUX == unstructure(items)


def test_unknown_fields_are_kept_in_extra_and_given_back() -> None:
    """A field from a newer API version neither breaks structuring nor gets lost."""
    payload = {**UNITE_LEGALE, "nouveau_champ": {"a": 1}}
    payload["forme_juridique"] = {**UNITE_LEGALE["forme_juridique"], "code_insee": "X"}
    unite = structure(payload, insee.UniteLegale)
    assert {"nouveau_champ": {"a": 1}} == unite.extra
    assert {"code_insee": "X"} == unite.forme_juridique.extra
    assert payload == unstructure(unite)


def test_absent_optional_fields_stay_absent() -> None:
    """Absent and null differ on the wire; the round trip keeps the difference."""
    lean = {k: v for k, v in MANDATAIRES_SOCIAUX[1]["data"].items() if k != "code_greffe"}
    officer = structure(lean, infogreffe.MandataireSocial)
    assert officer.code_greffe is None
    assert officer.nom is None
    assert lean == unstructure(officer)
    with_null = {**lean, "nom": None}
    assert with_null == unstructure(structure(with_null, infogreffe.MandataireSocial))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"siren": 418166096}, "expected a string, got int 418166096 @ $.data.siren"),
        (
            {"diffusable_commercialement": "oui"},
            "expected a boolean, got str 'oui' @ $.data.diffusable_commercialement",
        ),
        (
            {"forme_juridique": {"code": "5499"}},
            "required field missing @ $.data.forme_juridique.libelle",
        ),
        (
            {"tranche_effectif_salarie": []},
            "expected an object, got list [] @ $.data.tranche_effectif_salarie",
        ),
    ],
)
def test_a_payload_that_does_not_fit_names_the_json_path(
    change: dict[str, Any], expected: str
) -> None:
    """Mismatches raise UnexpectedPayloadError listing each offending JSON path."""
    with pytest.raises(UnexpectedPayloadError) as info:
        structure({**UNITE_LEGALE, **change}, insee.UniteLegale, operation_id="op")
    assert expected in info.value.problems
    assert expected in str(info.value)
    assert "op" == info.value.operation_id


def test_paths_inside_lists_carry_the_index() -> None:
    """An error inside a list item names its index."""
    bad = [MANDATAIRES_SOCIAUX[0], {"data": {"fonction": 3}, "links": {}, "meta": {}}]
    with pytest.raises(UnexpectedPayloadError) as info:
        structure(bad, tuple[infogreffe.MandataireSocialItem, ...])
    assert ["expected a string, got int 3 @ $.data[1].data.fonction"] == list(info.value.problems)


def test_a_bad_date_is_refused_with_its_path() -> None:
    """A date that does not parse is an error, not a silent string."""
    with pytest.raises(UnexpectedPayloadError) as info:
        structure(
            {**ATTESTATION_FISCALE, "date_periode_analysee": "31/04/2024"}, dgfip.AttestationFiscale
        )
    assert "@ $.data.date_periode_analysee" in info.value.problems[0]


PROVIDERS = sorted({e.provider for e in all_endpoints()})


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_provider_has_records_that_round_trip(provider: str) -> None:
    """Each provider's records structure and unstructure a full and a lean example losslessly."""
    endpoints = [e for e in all_endpoints() if e.provider == provider]
    assert endpoints
    for endpoint in endpoints:
        payload = example_data(endpoint.record)
        assert payload == unstructure(structure(payload, endpoint.record)), endpoint.operation_id


def _record_classes() -> list[type[records.Record]]:
    return [
        getattr(getattr(records, m), name)
        for m in records.__all__
        if m != "Record"
        for name in getattr(records, m).__all__
    ]


@pytest.mark.parametrize(
    "cls", _record_classes(), ids=lambda c: f"{c.__module__.rsplit('.', 1)[1]}.{c.__name__}"
)
def test_null_optional_fields_round_trip(cls: type[records.Record]) -> None:
    """Nullable fields accept null and give it back."""
    payload = example_payload(cls, nulls=True)
    assert payload == unstructure(structure(payload, cls))


def _json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    )


OFFICER = MANDATAIRES_SOCIAUX[0]["data"]


@settings(max_examples=50, deadline=None)
@given(
    nom=st.none() | st.text(max_size=12),
    timestamp=st.none() | st.integers(),
    extra=st.dictionaries(
        st.text(min_size=1, max_size=8).map(lambda s: "x_" + s), _json_values(), max_size=3
    ),
    drop=st.sets(st.sampled_from(sorted(set(OFFICER) - {"fonction"}))),
)
def test_hypothesis_round_trip_through_json(
    nom: str | None, timestamp: int | None, extra: dict[str, Any], drop: set[str]
) -> None:
    """Unstructure, dump, load, structure: the record and the payload survive."""
    payload = {**OFFICER, "nom": nom, "date_naissance_timestamp": timestamp, **extra}
    for name in drop:
        payload.pop(name)
    officer = structure(payload, infogreffe.MandataireSocial)
    again = structure(json.loads(json.dumps(unstructure(officer))), infogreffe.MandataireSocial)
    assert officer == again
    assert payload == unstructure(again)


def test_records_are_immutable() -> None:
    """Records are frozen: assigning a field raises."""
    unite = structure(UNITE_LEGALE, insee.UniteLegale)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        unite.siren = "1"  # type: ignore[misc]
