"""Local checks of identifiers and traceability parameters, run before any I/O."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
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
    "shown",
    "validate_query_text",
    "validate_siren",
    "validate_siret",
    "validate_traceability",
]

OBJECT_MAX_LENGTH = 50
CONTEXT_MAX_LENGTH = 250
#: Longest text a free query parameter may hold.
QUERY_TEXT_MAX_LENGTH = 256
# Longer input is refused before anything else looks at it (a regex, int()):
# no identifier comes near it, spaces included.
_MAX_INPUT = 64
_LA_POSTE = "356000000"
# ASCII digits only: "\d" also matches fullwidth and Arabic-Indic digits, which
# would be sent percent-encoded and refused by the server, after spending quota.
_DIGITS = re.compile(r"\A[0-9]+\Z")
_RNA = re.compile(r"\AW[0-9]{9}\Z")
# EORI: a two-letter country code followed by up to 15 alphanumerics (FR uses the SIRET).
_EORI = re.compile(r"\A[A-Z]{2}[0-9A-Z]{1,15}\Z")
# Spaces other than " " are fine in free text (a non-breaking space before ":").
_SEPARATORS = frozenset({"Zs"})
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
    # Sizes first: str() of a 5,000-digit int raises ValueError, and a huge string
    # is not worth a regex pass. "" fails every check below.
    if isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return str(value) if 0 <= value < 10**_MAX_INPUT else ""
    if not isinstance(value, str) or len(value) > _MAX_INPUT:
        return ""
    return _SPACES.sub("", value)


def shown(value: object) -> str:
    """A short, safe rendering of a refused value for an error message.

    Long strings are cut, huge integers described, other objects named by type
    (their ``repr`` may be long, slow or raise).
    """
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() > 128:
            return f"an int of about {int(value.bit_length() * 0.30103) + 1} digits"
        return f"{value!r} (an int: pass identifiers as strings, leading zeros matter)"
    if isinstance(value, str):
        if len(value) > 40:  # cut short: a long value may be a secret pasted by mistake
            return f"{value[:8]!r}... ({len(value)} characters)"
        return repr(value)
    return f"a value of type {type(value).__name__}"


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
        raise InvalidSirenError(parameter, f"{shown(value)} is not a valid SIREN (9 digits, Luhn)")
    return text


def validate_siret(value: object, parameter: str = "siret") -> str:
    """Return the SIRET without spaces, or raise :class:`InvalidSiretError`."""
    text = _clean(value)
    if not _is_siret(text):
        raise InvalidSiretError(parameter, f"{shown(value)} is not a valid SIRET (14 digits, Luhn)")
    return text


def _upper_ascii(value: object) -> str:
    # ASCII first: "ß".upper() is "SS", "ı".upper() is "I"; a value must not become valid that way.
    text = _clean(value)
    return text.upper() if text.isascii() else ""


def _rna(value: object, parameter: str) -> str:
    text = _upper_ascii(value)
    if not _RNA.match(text):
        raise InvalidIdentifierError(
            parameter, f"{shown(value)} is not an RNA number (W + 9 digits)"
        )
    return text


def _eori(value: object, parameter: str) -> str:
    text = _upper_ascii(value)
    if not _EORI.match(text):
        raise InvalidIdentifierError(parameter, f"{shown(value)} is not an EORI number")
    if text.startswith("FR") and not _is_siret(text[2:]) and not _is_siren(text[2:]):
        raise InvalidIdentifierError(parameter, f"{shown(value)}: a French EORI is FR + a SIRET")
    return text


def _year(value: object, parameter: str) -> str:
    text = _clean(value)
    this_year = dt.date.today().year
    if not (len(text) == 4 and _DIGITS.match(text) and 1900 <= int(text) <= this_year + 1):
        raise InvalidIdentifierError(
            parameter, f"{shown(value)} is not a year (1900-{this_year + 1})"
        )
    return text


def _month(value: object, parameter: str) -> str:
    text = _clean(value)
    if not (len(text) <= 2 and _DIGITS.match(text) and 1 <= int(text) <= 12):
        raise InvalidIdentifierError(parameter, f"{shown(value)} is not a month (1-12)")
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
        return validate_query_text(value, parameter)
    if any(check(text) for check in accepted):
        return text
    if kind is IdKind.SIRET_OR_EORI:
        return _eori(value, parameter)
    if text.upper().startswith("W"):
        return _rna(value, parameter)
    names = kind.value.replace("_or_", " or ").upper()
    if kind is IdKind.SIRET_OR_RNA:
        raise InvalidSiretError(parameter, f"{shown(value)} is not a valid {names}")
    raise InvalidSirenError(parameter, f"{shown(value)} is not a valid {names}")


def validate_query_text(value: object, parameter: str) -> str:
    """A free query parameter as sent: a string or an int, visible ASCII, not too long.

    Raises:
        InvalidParameterError: another type, control or non-ASCII characters
            (``limit="１０"``), or more than ``QUERY_TEXT_MAX_LENGTH`` characters.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > 64:
            raise InvalidParameterError(parameter, f"{shown(value)} is out of range")
        return str(value)
    if not isinstance(value, str):
        raise InvalidParameterError(parameter, f"{shown(value)}: expected a string or an int")
    if len(value) > QUERY_TEXT_MAX_LENGTH:
        raise InvalidParameterError(
            parameter, f"is {len(value)} characters long; at most {QUERY_TEXT_MAX_LENGTH}"
        )
    text = value.strip()
    if not text or not text.isascii() or not text.isprintable():
        raise InvalidParameterError(
            parameter, f"{shown(value)}: expected printable ASCII (digits 0-9, letters...)"
        )
    return text


def _free_text(value: str, parameter: str, limit: int, qualifier: str) -> None:
    """Refuse control characters in context and object (they are written in logs and audits)."""
    if len(value) > limit:
        raise InvalidParameterError(
            parameter, f"is {len(value)} characters long; {qualifier} {limit}"
        )
    if not value.isprintable() and any(
        unicodedata.category(char) not in _SEPARATORS for char in value if not char.isprintable()
    ):
        raise InvalidParameterError(
            parameter, "holds control or invisible format characters (line breaks, tabs...)"
        )


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
        if value is None or (isinstance(value, str) and not value.strip()):
            raise MissingParameterError(name)
        if name != "recipient" and not isinstance(value, str):
            raise InvalidParameterError(name, f"{shown(value)}: expected a string")
    assert isinstance(context, str)
    assert isinstance(object_, str)
    siret = validate_siret(recipient, "recipient")
    _free_text(object_, "object", OBJECT_MAX_LENGTH, "the API allows")
    _free_text(context, "context", CONTEXT_MAX_LENGTH, "keep it under")
    return {"recipient": siret, "context": context, "object": object_}
