"""What every record shares: room for unknown fields, memory of absent ones, values that misfit.

Also the two value types the generated records use beyond the builtins:
:class:`OpenEnum` (a closed set of values that still accepts a new one) and
:class:`Timestamp` (an epoch number that reads as a datetime).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from apientreprise_async._errors import UnfitFieldError

__all__ = ["OpenEnum", "Record", "Timestamp"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_NOTHING: frozenset[str] = frozenset()
# Defaults of the bookkeeping slots, read when a record built from a payload left them unset.
_DEFAULTS: Mapping[str, Any] = {"extra": _EMPTY, "unfit": _EMPTY, "_absent": _NOTHING}


@attrs.frozen(kw_only=True, repr=False, eq=False)
class Record:
    """Base of every typed record of the API.

    Attributes:
        extra: fields the payload carried that this version of the library does
            not know (a newer API version may add some); kept verbatim so that
            nothing the server sent is lost.
        unfit: fields whose value did not fit the documented type (an object
            where a string was documented, ``null`` in a field documented as
            never null), with the value as the server sent it. Reading such a
            field raises :class:`~apientreprise_async.UnfitFieldError` (an
            ``AttributeError``), so a value is never of another type than its
            annotation says; ``getattr(record, name, default)`` reads it safely.

    Fields absent from the payload (as opposed to sent as ``null``) read as
    ``None`` when their type allows it, else raise
    :class:`~apientreprise_async.UnfitFieldError`. Either way they are
    remembered, so unstructuring gives back the same keys.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 ``unfit``: lenient records keep what does not fit.
    """

    extra: Mapping[str, Any] = attrs.field(default=_EMPTY, repr=False)
    unfit: Mapping[str, Any] = attrs.field(default=_EMPTY, repr=False, eq=False)
    _absent: frozenset[str] = attrs.field(default=_NOTHING, repr=False, eq=False, alias="_absent")

    def __getattr__(self, name: str) -> Any:
        # Only reached when a slot is unset: records built from a payload skip the
        # bookkeeping slots when empty, and leave unset a field that did not fit.
        default = _DEFAULTS.get(name)
        if default is not None:
            return default
        if name not in attrs.fields_dict(type(self)):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        unfit = self.unfit
        if name in unfit:
            value = unfit[name]
            why = "was null" if value is None else f"was {_shown(value)}"
        else:
            value, why = None, "was absent"
        raise UnfitFieldError(
            f"{type(self).__name__}.{name} {why}, which does not fit its documented type; "
            "the value as sent is in .unfit and in the response's raw body",
            field=name,
            value=value,
            obj=self,
        )

    def __eq__(self, other: object) -> bool:
        # By hand, not attrs': a field left unset (it did not fit) must compare, not raise.
        if other.__class__ is not self.__class__:
            return NotImplemented
        for name in _compared(type(self)):
            if getattr(self, name, _Unfit) != getattr(other, name, _Unfit):
                return False
        return bool(self.unfit == other.unfit)

    # Records hold mappings (``extra``, free-form objects): they were never hashable.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = []
        for field in attrs.fields(type(self)):
            if field.repr:
                value = getattr(self, field.name, _Unfit if field.name in self.unfit else _Absent)
                shown.append(f"{field.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


_COMPARED: dict[type, tuple[str, ...]] = {}


def _compared(cls: type) -> tuple[str, ...]:
    names = _COMPARED.get(cls)
    if names is None:
        names = tuple(f.name for f in attrs.fields(cls) if f.name not in ("unfit", "_absent"))
        _COMPARED[cls] = names
    return names


class _Marker:
    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


_Unfit = _Marker("<unfit>")
_Absent = _Marker("<absent>")


def _shown(value: Any) -> str:
    kind = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
    return f"{kind} {value!r:.40}"


class OpenEnum(enum.StrEnum):
    """A closed set of values documented by the API that still accepts a new one.

    Members compare equal to their string (``EtatAdministratif.A == "A"``).
    A value the OpenAPI file does not list (a provider added one) becomes a
    member that is not declared on the class: ``known`` is false, ``value``
    and ``name`` are the string as sent, and nothing fails.
    """

    @classmethod
    def _missing_(cls, value: object) -> OpenEnum | None:
        if not isinstance(value, str):
            return None
        unknown: dict[str, OpenEnum] = cls.__dict__.get("_unknown_members", {})
        member = unknown.get(value)
        if member is None:
            member = str.__new__(cls, value)
            member._name_ = value
            member._value_ = value
            if len(unknown) < 256:  # a bounded cache: a misbehaving provider cannot grow it
                unknown[value] = member
                type.__setattr__(cls, "_unknown_members", unknown)
        return member

    @property
    def known(self) -> bool:
        """Whether the OpenAPI file lists this value."""
        return self._name_ in type(self)._member_map_

    def __str__(self) -> str:
        return str(self._value_)


class Timestamp(int):
    """Seconds since the epoch, as some providers send dates (INSEE's ``date_creation``).

    Still the integer the server sent (it compares, sorts and serialises as
    one); :attr:`datetime` and :attr:`date` read it as a date.
    """

    __slots__ = ()

    @property
    def datetime(self) -> dt.datetime:
        """The instant, as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self, tz=dt.UTC)

    @property
    def date(self) -> dt.date:
        """The calendar day of the instant in Paris (where the registers are kept)."""
        return self.datetime.astimezone(_PARIS).date()

    def __repr__(self) -> str:
        return f"Timestamp({int(self)})"


try:
    from zoneinfo import ZoneInfo

    _PARIS: dt.tzinfo = ZoneInfo("Europe/Paris")
except Exception:  # no tz database on this machine: CET, a fixed offset is close enough
    _PARIS = dt.timezone(dt.timedelta(hours=1))
