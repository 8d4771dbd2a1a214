"""Local checks of identifiers and traceability parameters, run before any I/O."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

from ._catalogue import IdKind
from ._errors import (
    InvalidIdentifierError,
    InvalidParameterError,
    InvalidSirenError,
    InvalidSiretError,
    MissingParameterError,
)

__all__ = [
    "OBJECT_MAX_LENGTH",
    "is_valid_siren",
    "is_valid_siret",
    "luhn_checksum",
    "normalize_identifier",
    "validate_siren",
    "validate_siret",
    "validate_traceability",
]

OBJECT_MAX_LENGTH = 50
CONTEXT_MAX_LENGTH = 250
_LA_POSTE = "356000000"
_DIGITS = re.compile(r"\A\d+\Z")
_RNA = re.compile(r"\AW\d{9}\Z")
# EORI: a two-letter country code followed by up to 15 alphanumerics (FR uses the SIRET).
_EORI = re.compile(r"\A[A-Z]{2}[0-9A-Z]{1,15}\Z")
_SPACES = re.compile(r"[\s\u00a0\u202f]+")


def luhn_checksum(digits: str) -> int:
    """The Luhn sum of a digit string (valid when divisible by 10)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total


def _clean(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        return ""
    return _SPACES.sub("", value)


# The checks below take text already through _clean: callers that have cleaned
# a value once (every call's path parameters) do not run the regex again.
def _is_siren(text: str) -> bool:
    return len(text) == 9 and bool(_DIGITS.match(text)) and luhn_checksum(text) % 10 == 0


def _is_siret(text: str) -> bool:
    if len(text) != 14 or not _DIGITS.match(text):
        return False
    if text.startswith(_LA_POSTE):
        return True
    return luhn_checksum(text) % 10 == 0


def is_valid_siren(value: object) -> bool:
    """Whether ``value`` is a SIREN: 9 digits passing Luhn (spaces ignored)."""
    return _is_siren(_clean(value))


def is_valid_siret(value: object) -> bool:
    """Whether ``value`` is a SIRET: 14 digits passing Luhn, or a La Poste SIRET."""
    return _is_siret(_clean(value))


def validate_siren(value: object, parameter: str = "siren") -> str:
    """Return the SIREN without spaces, or raise :class:`InvalidSirenError`."""
    text = _clean(value)
    if not _is_siren(text):
        raise InvalidSirenError(parameter, f"{value!r} is not a valid SIREN (9 digits, Luhn)")
    return text


def validate_siret(value: object, parameter: str = "siret") -> str:
    """Return the SIRET without spaces, or raise :class:`InvalidSiretError`."""
    text = _clean(value)
    if not _is_siret(text):
        raise InvalidSiretError(parameter, f"{value!r} is not a valid SIRET (14 digits, Luhn)")
    return text


def _rna(value: object, parameter: str) -> str:
    text = _clean(value).upper()
    if not _RNA.match(text):
        raise InvalidIdentifierError(parameter, f"{value!r} is not an RNA number (W + 9 digits)")
    return text


def _eori(value: object, parameter: str) -> str:
    text = _clean(value).upper()
    if not _EORI.match(text):
        raise InvalidIdentifierError(parameter, f"{value!r} is not an EORI number")
    if text.startswith("FR") and not _is_siret(text[2:]) and not _is_siren(text[2:]):
        raise InvalidIdentifierError(parameter, f"{value!r}: a French EORI is FR + a SIRET")
    return text


def _year(value: object, parameter: str) -> str:
    text = _clean(value)
    this_year = dt.date.today().year
    if not (len(text) == 4 and _DIGITS.match(text) and 1900 <= int(text) <= this_year + 1):
        raise InvalidIdentifierError(parameter, f"{value!r} is not a year (1900-{this_year + 1})")
    return text


def _month(value: object, parameter: str) -> str:
    text = _clean(value)
    if not (_DIGITS.match(text) and 1 <= int(text) <= 12 and len(text) <= 2):
        raise InvalidIdentifierError(parameter, f"{value!r} is not a month (1-12)")
    return text.zfill(2)


# Kinds that take one of several identifiers: the checks that accept the cleaned text as is.
_ACCEPTED: dict[IdKind, tuple[Callable[[str], bool], ...]] = {
    IdKind.SIREN_OR_RNA: (_is_siren,),
    IdKind.SIRET_OR_RNA: (_is_siret,),
    IdKind.SIRET_OR_EORI: (_is_siret,),
    IdKind.SIREN_OR_SIRET_OR_RNA: (_is_siren, _is_siret),
}


def normalize_identifier(kind: IdKind, value: object, parameter: str) -> str:
    """Check ``value`` against ``kind`` and return its canonical form.

    Raises:
        InvalidSirenError, InvalidSiretError, InvalidIdentifierError: malformed input.
        MissingParameterError: ``value`` is ``None`` or empty.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise MissingParameterError(parameter)
    if kind is IdKind.SIREN:
        return validate_siren(value, parameter)
    if kind is IdKind.SIRET:
        return validate_siret(value, parameter)
    if kind is IdKind.RNA:
        return _rna(value, parameter)
    if kind is IdKind.EORI:
        return _eori(value, parameter)
    if kind is IdKind.YEAR:
        return _year(value, parameter)
    if kind is IdKind.MONTH:
        return _month(value, parameter)
    text = _clean(value)
    accepted = _ACCEPTED.get(kind)
    if accepted is None:
        if isinstance(value, str) and value != "":
            return value
        return str(value)
    if any(check(text) for check in accepted):
        return text
    if kind is IdKind.SIRET_OR_EORI:
        return _eori(value, parameter)
    if text.upper().startswith("W"):
        return _rna(value, parameter)
    names = kind.value.replace("_or_", " or ").upper()
    if kind is IdKind.SIRET_OR_RNA:
        raise InvalidSiretError(parameter, f"{value!r} is not a valid {names}")
    raise InvalidSirenError(parameter, f"{value!r} is not a valid {names}")


def validate_traceability(
    recipient: str | None, context: str | None, object_: str | None
) -> dict[str, str]:
    """Check the three traceability parameters and return them as query params.

    Raises:
        MissingParameterError: one of them is missing or blank.
        InvalidSiretError: ``recipient`` is not a valid SIRET.
        InvalidParameterError: ``object`` longer than 50 characters, ``context`` too long.
    """
    for name, value in (("recipient", recipient), ("context", context), ("object", object_)):
        if value is None or not str(value).strip():
            raise MissingParameterError(name)
    assert recipient is not None
    assert context is not None
    assert object_ is not None
    siret = validate_siret(recipient, "recipient")
    if len(object_) > OBJECT_MAX_LENGTH:
        raise InvalidParameterError(
            "object", f"is {len(object_)} characters long; the API allows {OBJECT_MAX_LENGTH}"
        )
    if len(context) > CONTEXT_MAX_LENGTH:
        raise InvalidParameterError(
            "context", f"is {len(context)} characters long; keep it under {CONTEXT_MAX_LENGTH}"
        )
    return {"recipient": siret, "context": context, "object": object_}
