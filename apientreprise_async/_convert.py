"""The single cattrs converter between API payloads and records, configured once.

- Dates (``"2024-03-31"``) become :class:`datetime.date`, timestamps
  (``"2024-03-31T12:00:00.000+02:00"``) :class:`datetime.datetime`.
- Scalars are checked, never coerced: a number where a string is expected is
  an error, not ``"12"``.
- Lists become tuples (records are frozen) and go back to lists.
- Fields a record does not know land in its ``extra`` mapping; fields the
  payload left out are remembered, so unstructuring gives back the same keys.
- Any mismatch raises :class:`UnexpectedPayloadError` naming each JSON path.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from types import UnionType
from typing import Any, Union, get_args, get_origin

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.v import format_exception

from ._errors import UnexpectedPayloadError
from .records import Record

__all__ = ["converter", "structure", "unstructure"]

_HIDDEN = ("extra", "_absent")

converter = cattrs.Converter(detailed_validation=True)


def _expected(kind: str, value: Any) -> TypeError:
    return TypeError(f"expected {kind}, got {type(value).__name__} {value!r:.40}")


def _structure_str(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        raise _expected("a string", value)
    return value


def _structure_int(value: Any, _: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _expected("an integer", value)
    return value


def _structure_float(value: Any, _: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _expected("a number", value)
    # An integral JSON number stays an int, so that it dumps back as it came.
    return value


def _structure_bool(value: Any, _: Any) -> bool:
    if not isinstance(value, bool):
        raise _expected("a boolean", value)
    return value


def _structure_date(value: Any, _: Any) -> dt.date:
    if not isinstance(value, str):
        raise _expected("a date string", value)
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"expected an ISO date (YYYY-MM-DD), got {value!r:.40}") from None


def _structure_datetime(value: Any, _: Any) -> dt.datetime:
    if not isinstance(value, str):
        raise _expected("a timestamp string", value)
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"expected an ISO 8601 timestamp, got {value!r:.40}") from None


converter.register_structure_hook(str, _structure_str)
converter.register_structure_hook(int, _structure_int)
converter.register_structure_hook(float, _structure_float)
converter.register_structure_hook(bool, _structure_bool)
converter.register_structure_hook(dt.date, _structure_date)
converter.register_structure_hook(dt.datetime, _structure_datetime)
converter.register_unstructure_hook(dt.date, lambda value: value.isoformat())
converter.register_unstructure_hook(dt.datetime, lambda value: value.isoformat())


def _is_tuple(type_: Any) -> bool:
    return get_origin(type_) is tuple


def _tuple_hooks(type_: Any) -> Callable[[Any, Any], tuple[Any, ...]]:
    item_type = get_args(type_)[0]
    hook: Callable[[Any, Any], Any] | None = None

    def structure_tuple(value: Any, _: Any) -> tuple[Any, ...]:
        # cattrs would iterate a string or a mapping; a JSON array is required here.
        nonlocal hook
        if not isinstance(value, list):
            raise _expected("a list", value)
        if hook is None:
            # Looked up once, not per item (a liasse holds hundreds); lazily, so that
            # a record may contain a tuple of itself.
            hook = converter.get_structure_hook(item_type)
        items: list[Any] = []
        errors: list[Exception] = []
        for index, item in enumerate(value):
            try:
                items.append(hook(item, item_type))
            except Exception as exc:
                exc.__notes__ = [
                    *getattr(exc, "__notes__", []),
                    cattrs.IterableValidationNote(
                        f"Structuring {type_} @ index {index}", index, item_type
                    ),
                ]
                errors.append(exc)
        if errors:
            raise cattrs.IterableValidationError(f"While structuring {type_!r}", errors, type_)
        return tuple(items)

    return structure_tuple


def _unstructure_tuple(type_: Any) -> Callable[[tuple[Any, ...]], list[Any]]:
    item_type = get_args(type_)[0]

    def unstructure_tuple(value: tuple[Any, ...]) -> list[Any]:
        return [converter.unstructure(item, item_type) for item in value]

    return unstructure_tuple


converter.register_structure_hook_factory(_is_tuple, _tuple_hooks)
converter.register_unstructure_hook_factory(_is_tuple, _unstructure_tuple)


def _is_optional(type_: Any) -> bool:
    args = get_args(type_)
    return len(args) == 2 and type(None) in args and get_origin(type_) in (Union, UnionType)


def _optional_hooks(type_: Any) -> Callable[[Any, Any], Any]:
    inner = next(arg for arg in get_args(type_) if arg is not type(None))
    hook: Callable[[Any, Any], Any] | None = None

    def structure_optional(value: Any, _: Any) -> Any:
        # cattrs' own Optional hook looks the inner hook up on every value; records
        # are mostly ``X | None`` fields, so resolve it once (lazily: a record may
        # refer to itself).
        nonlocal hook
        if value is None:
            return None
        if hook is None:
            hook = converter.get_structure_hook(inner)
        return hook(value, inner)

    return structure_optional


converter.register_structure_hook_factory(_is_optional, _optional_hooks)


def _is_record(type_: Any) -> bool:
    return isinstance(type_, type) and issubclass(type_, Record) and type_ is not Record


def _record_structure(cls: type[Record]) -> Callable[[Any, Any], Record]:
    base = make_dict_structure_fn(
        cls,
        converter,
        _cattrs_detailed_validation=True,
        extra=override(omit=True),
        _absent=override(omit=True),
    )
    known = frozenset(a.name for a in attrs.fields(cls) if a.name not in _HIDDEN)

    def structure_record(value: Any, _: Any) -> Record:
        if not isinstance(value, Mapping):
            raise _expected("an object", value)
        record = base(value, cls)
        if value.keys() == known:
            return record  # the usual case: exactly the documented fields, one set comparison
        extra = {key: item for key, item in value.items() if key not in known}
        absent = known.difference(value)
        # Filled after construction: they describe the payload, not the data, and
        # users building records by hand should not have to care about them.
        if extra:
            object.__setattr__(record, "extra", extra)
        if absent:
            object.__setattr__(record, "_absent", absent)
        return record

    return structure_record


def _record_unstructure(cls: type[Record]) -> Callable[[Record], dict[str, Any]]:
    base = make_dict_unstructure_fn(
        cls, converter, extra=override(omit=True), _absent=override(omit=True)
    )

    def unstructure_record(record: Record) -> dict[str, Any]:
        out = base(record)
        for name in record._absent:
            out.pop(name, None)
        out.update(record.extra)
        return out

    return unstructure_record


converter.register_structure_hook_factory(_is_record, _record_structure)
converter.register_unstructure_hook_factory(_is_record, _record_unstructure)


def _describe(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, TypeError | ValueError) and str(exc):
        return str(exc)
    return format_exception(exc, type_)


def structure(data: Any, record: Any, *, operation_id: str | None = None, url: str = "") -> Any:
    """Build ``record`` (a record class or ``tuple[Class, ...]``) from the ``data`` of an answer.

    Raises:
        UnexpectedPayloadError: the payload does not fit; ``problems`` names each JSON path.
    """
    try:
        return converter.structure(data, record)
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        problems = cattrs.transform_error(exc, path="$.data", format_exception=_describe)
        name = getattr(record, "__name__", None) or repr(record)
        where = operation_id or "the answer"
        shown = "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
        raise UnexpectedPayloadError(
            f"{where}: the payload does not fit {name}: {shown}",
            problems=problems,
            operation_id=operation_id,
            url=url,
        ) from exc


def unstructure(value: Any) -> Any:
    """Turn a record (or a tuple of records) back into JSON-ready data, extra fields included."""
    return converter.unstructure(value)
