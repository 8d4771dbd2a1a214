"""SIREN/SIRET checksums and the other identifier rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apientreprise_async import (
    InvalidIdentifierError,
    InvalidSirenError,
    InvalidSiretError,
    MissingParameterError,
    is_valid_siren,
    is_valid_siret,
)
from apientreprise_async._catalogue import IdKind
from apientreprise_async._identifiers import (
    luhn_checksum,
    normalize_identifier,
    validate_traceability,
)


def complete_luhn(prefix: str) -> str:
    """Append the digit that makes ``prefix`` pass Luhn."""
    for digit in "0123456789":
        if luhn_checksum(prefix + digit) % 10 == 0:
            return prefix + digit
    raise AssertionError("unreachable")


digits = st.text(alphabet="0123456789", min_size=1, max_size=1)


@given(st.text(alphabet="0123456789", min_size=8, max_size=8))
def test_any_luhn_completed_siren_is_valid(prefix: str) -> None:
    """A 9-digit string completed with its Luhn digit is a SIREN."""
    assert is_valid_siren(complete_luhn(prefix))


@given(st.text(alphabet="0123456789", min_size=13, max_size=13))
def test_any_luhn_completed_siret_is_valid(prefix: str) -> None:
    """A 14-digit string completed with its Luhn digit is a SIRET."""
    assert is_valid_siret(complete_luhn(prefix))


@given(st.text(alphabet="0123456789", min_size=8, max_size=8), st.integers(1, 9))
def test_a_wrong_check_digit_is_refused(prefix: str, shift: int) -> None:
    """Changing the check digit of a valid SIREN breaks it."""
    good = complete_luhn(prefix)
    bad = good[:-1] + str((int(good[-1]) + shift) % 10)
    assert not is_valid_siren(bad)
    with pytest.raises(InvalidSirenError) as info:
        normalize_identifier(IdKind.SIREN, bad, "siren")
    assert info.value.parameter == "siren"
    assert isinstance(info.value, ValueError)


@given(st.text(alphabet="0123456789", min_size=5, max_size=5))
def test_la_poste_sirets_pass_whatever_their_checksum(suffix: str) -> None:
    """La Poste's SIRETs (356000000 prefix) follow another rule and are accepted."""
    assert is_valid_siret("356000000" + suffix)


@pytest.mark.parametrize(
    "value", ["", "12345678", "1234567890", "41816609a", None, "4181660961", 12.5]
)
def test_malformed_sirens(value: object) -> None:
    """Wrong length, letters, None and non-strings are not SIRENs."""
    assert not is_valid_siren(value)


@pytest.mark.parametrize("value", ["", "4181660960005", "418166096000511", "4181660960005x"])
def test_malformed_sirets(value: str) -> None:
    """Wrong length and letters are not SIRETs."""
    assert not is_valid_siret(value)
    with pytest.raises(InvalidSiretError if value else MissingParameterError):
        normalize_identifier(IdKind.SIRET, value, "siret")


def test_spaces_are_removed() -> None:
    """Human-formatted identifiers are accepted and normalised."""
    assert normalize_identifier(IdKind.SIREN, "418 166 096", "siren") == "418166096"
    assert normalize_identifier(IdKind.SIRET, "418 166 096 00051", "siret") == "41816609600051"
    assert normalize_identifier(IdKind.SIREN, "418\u00a0166\u00a0096", "siren") == "418166096"


def test_other_kinds() -> None:
    """RNA, EORI, years, months and the mixed kinds."""
    assert normalize_identifier(IdKind.RNA, "w751212517", "rna") == "W751212517"
    assert normalize_identifier(IdKind.SIRET_OR_RNA, "W751212517", "id") == "W751212517"
    assert normalize_identifier(IdKind.SIRET_OR_RNA, "41816609600051", "id") == "41816609600051"
    assert normalize_identifier(IdKind.SIREN_OR_RNA, "418166096", "id") == "418166096"
    assert normalize_identifier(IdKind.SIRET_OR_EORI, "FR41816609600051", "id").startswith("FR")
    assert normalize_identifier(IdKind.SIRET_OR_EORI, "DE123456789", "id") == "DE123456789"
    assert normalize_identifier(IdKind.SIREN_OR_SIRET_OR_RNA, "41816609600051", "id")
    assert normalize_identifier(IdKind.YEAR, 2023, "year") == "2023"
    assert normalize_identifier(IdKind.MONTH, 3, "month") == "03"
    for kind, value in [
        (IdKind.RNA, "W12"),
        (IdKind.YEAR, "1850"),
        (IdKind.YEAR, "20x3"),
        (IdKind.MONTH, "13"),
        (IdKind.MONTH, "0"),
        (IdKind.SIRET_OR_EORI, "FR123"),
        (IdKind.SIRET_OR_RNA, "W1"),
    ]:
        with pytest.raises(InvalidIdentifierError):
            normalize_identifier(kind, value, "p")
    with pytest.raises(InvalidSiretError):
        normalize_identifier(IdKind.SIRET_OR_RNA, "41816609600052", "id")


def test_traceability_rules() -> None:
    """Each missing parameter is named; recipient is a SIRET; object is capped at 50."""
    assert validate_traceability("13002526500013", "ctx", "obj") == {
        "recipient": "13002526500013",
        "context": "ctx",
        "object": "obj",
    }
    for args, name in [
        ((None, "c", "o"), "recipient"),
        (("13002526500013", None, "o"), "context"),
        (("13002526500013", "c", "  "), "object"),
    ]:
        with pytest.raises(MissingParameterError) as info:
            validate_traceability(*args)
        assert info.value.parameter == name
    with pytest.raises(InvalidSiretError) as bad:
        validate_traceability("13002526500014", "c", "o")
    assert bad.value.parameter == "recipient"
    with pytest.raises(ValueError, match="object"):
        validate_traceability("13002526500013", "c", "x" * 51)
    assert validate_traceability("13002526500013", "c", "x" * 50)["object"] == "x" * 50
