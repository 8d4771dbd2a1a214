"""Between API payloads and records: a fast pass, a lenient pass that explains, and back.

- Dates (``"2024-03-31"``) become :class:`datetime.date`, timestamps
  (``"2024-03-31T12:00:00.000+02:00"``) :class:`datetime.datetime`, epoch
  numbers :class:`~apientreprise_async.records.Timestamp`, documented closed
  sets of values :class:`~apientreprise_async.records.OpenEnum` members.
- Scalars are checked, never coerced: a number where a string is expected does
  not fit, it does not become ``"12"``.
- Lists become tuples (records are frozen) and go back to lists.
- Fields a record does not know land in its ``extra`` mapping; fields the
  payload left out are remembered, so unstructuring gives back the same keys.

Structuring first runs a function generated per record class that checks
and builds in one go, with no bookkeeping (the answer almost always fits).
Only when it fails does the detailed pass run: it builds the same records,
leaves each value that does not fit out of its typed attribute (kept in the
record's ``unfit`` mapping) and names every such JSON path in ``problems``.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from types import UnionType
from typing import Any, Union, get_args, get_origin

import attrs
import cattrs

from ._errors import UnexpectedPayloadError
from .records import Record
from .records._base import OpenEnum, Timestamp

__all__ = ["converter", "structure", "structure_lenient", "unstructure"]

_HIDDEN = frozenset({"extra", "unfit", "_absent"})
_NONE = type(None)


_ABSENT = object()


class _Misfit(Exception):
    """The fast pass gives up (any exception does: the lenient pass decides what happened)."""


# -- what a type is ------------------------------------------------------------------


@attrs.frozen
class _Kind:
    """A field's type reduced to what structuring needs."""

    tag: str  # str int float bool date datetime any mapping record tuple optional enum timestamp
    inner: Any = None  # record class, enum class, or the _Kind of an item / optional value


def _kind(type_: Any) -> _Kind:
    if type_ in _SCALARS:
        return _Kind(_SCALARS[type_])
    if type_ is Any:
        return _Kind("any")
    origin = get_origin(type_)
    args = get_args(type_)
    if origin in (Union, UnionType):
        rest = [a for a in args if a is not _NONE]
        if len(rest) == 1 and len(args) == 2:
            return _Kind("optional", _kind(rest[0]))
        raise TypeError(f"unsupported union in a record: {type_!r}")
    if origin is tuple:
        return _Kind("tuple", _kind(args[0]))
    if origin is not None and origin.__name__ == "Mapping":
        return _Kind("mapping")
    if isinstance(type_, type):
        if issubclass(type_, Timestamp):
            return _Kind("timestamp")
        if issubclass(type_, OpenEnum):
            return _Kind("enum", type_)
        if issubclass(type_, Record) and type_ is not Record:
            return _Kind("record", type_)
    raise TypeError(f"unsupported type in a record: {type_!r}")


_SCALARS = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    dt.date: "date",
    dt.datetime: "datetime",
}


@attrs.frozen
class _Field:
    name: str
    kind: _Kind
    required: bool  # no default: the OpenAPI file lists it as required


_plans: dict[type[Record], tuple[_Field, ...]] = {}


def _plan(cls: type[Record]) -> tuple[_Field, ...]:
    plan = _plans.get(cls)
    if plan is None:
        hints = attrs.resolve_types(cls).__attrs_attrs__
        plan = tuple(
            _Field(a.name, _kind(a.type), a.default is attrs.NOTHING)
            for a in hints
            if a.name not in _HIDDEN
        )
        _plans[cls] = plan
    return plan


def _known(cls: type[Record]) -> frozenset[str]:
    return frozenset(f.name for f in _plan(cls))


# -- the fast pass: one generated function per record class ---------------------------

_fast: dict[Any, Callable[[Any], Any]] = {}
_counter = itertools.count()


def _finish(record: Record, value: dict[str, Any], known: frozenset[str]) -> None:
    """Remember unknown and absent fields (only when the keys differ from the record's)."""
    extra = {key: item for key, item in value.items() if key not in known}
    absent = known.difference(value)
    # Set after construction: they describe the payload, not the data.
    if extra:
        object.__setattr__(record, "extra", extra)
    if absent:
        object.__setattr__(record, "_absent", absent)


def _fast_lines(kind: _Kind, var: str, env: dict[str, Any], indent: str) -> list[str]:
    """Statements checking (and converting in place) ``var``; any failure raises."""
    tag = kind.tag
    if tag == "optional":
        inner = _fast_lines(kind.inner, var, env, indent + "    ")
        return [f"{indent}if {var} is not None:", *inner] if inner else []
    if tag in ("str", "int", "bool"):
        return [f"{indent}if {var}.__class__ is not {tag}: raise _Misfit"]
    if tag == "float":
        cond = f"{var}.__class__ is not float and {var}.__class__ is not int"
        return [f"{indent}if {cond}: raise _Misfit"]
    if tag == "date":
        return [f"{indent}{var} = _date({var})"]  # TypeError unless a str: not a fit
    if tag == "datetime":
        return [f"{indent}{var} = _datetime({var})"]
    if tag == "any":
        return []
    if tag == "mapping":
        return [f"{indent}if {var}.__class__ is not dict: raise _Misfit"]
    if tag == "timestamp":
        return [
            f"{indent}if {var}.__class__ is not int: raise _Misfit",
            f"{indent}{var} = _Timestamp({var})",
        ]
    if tag == "enum":
        name = f"_enum{next(_counter)}"
        env[name] = kind.inner
        env[name + "_map"] = kind.inner._value2member_map_
        # Unknown values are accepted (the lookup fails only on a non-string).
        return [f"{indent}{var} = {name}_map.get({var}) or {name}({var})"]
    name = f"_fn{next(_counter)}"
    env[name] = _fast_function(kind)
    return [f"{indent}{var} = {name}({var})"]


def _fast_function(kind: _Kind) -> Callable[[Any], Any]:
    """The fast structuring function of a record or tuple kind (cached; built lazily)."""
    key = kind
    found = _fast.get(key)
    if found is not None:
        return found
    env: dict[str, Any] = {"_Misfit": _Misfit, "_date": dt.date.fromisoformat}
    env.update(_datetime=dt.datetime.fromisoformat, _Timestamp=Timestamp, _finish=_finish)
    if kind.tag == "tuple":
        item = kind.inner
        lines = ["def structure_tuple(v):", "    if v.__class__ is not list: raise _Misfit"]
        if item.tag in ("record", "tuple"):
            env["_item"] = _fast_function(item)
            checks = ["_item"]
            lines.append("    return tuple([_item(i) for i in v])")
        else:
            checks = _fast_lines(item, "i", env, "        ")
        if not checks:
            lines.append("    return tuple(v)")
        elif item.tag not in ("record", "tuple"):
            lines += ["    out = []", "    for i in v:", *checks, "        out.append(i)"]
            lines.append("    return tuple(out)")
        function_name = "structure_tuple"
    else:
        cls = kind.inner
        plan = _plan(cls)
        env["_cls"] = cls
        env["_new"] = object.__new__
        env["_known"] = _known(cls)
        env["_ABSENT"] = _ABSENT
        body: list[str] = []
        optional = False
        for field in plan:
            setter = f"_set_{field.name}"
            env[setter] = getattr(cls, field.name).__set__
            if field.required:
                body.append(f"    v = d[{field.name!r}]")  # KeyError: not a fit
            else:
                optional = True
                body += [
                    f"    v = d.get({field.name!r}, _ABSENT)",
                    "    if v is _ABSENT:",
                    "        v = None",
                    "        missing = True",
                ]
            body += _fast_lines(field.kind, "v", env, "    ")
            body.append(f"    {setter}(o, v)")
        # Every documented key was read: the same count means exactly the documented keys.
        check = f"missing or len(d) != {len(plan)}" if optional else f"len(d) != {len(plan)}"
        function_name = f"structure_{cls.__name__}"
        # Helpers as default arguments: local lookups, the cheapest Python has.
        helpers = sorted(name for name in env if name.startswith("_") and name != "_Misfit")
        lines = [
            f"def {function_name}(d, {', '.join(f'{h}={h}' for h in helpers)}):",
            "    if d.__class__ is not dict: raise _Misfit",
            "    o = _new(_cls)",
            *(["    missing = False"] if optional else []),
            *body,
            f"    if {check}: _finish(o, d, _known)",
            "    return o",
        ]
    # Placeholder first: a self-referencing record finds its own (future) function.
    holder: list[Callable[[Any], Any]] = []
    _fast[key] = lambda value: holder[0](value)
    code = compile("\n".join(lines), f"<structure {function_name}>", "exec")
    exec(code, env)
    function: Callable[[Any], Any] = env[function_name]
    holder.append(function)
    _fast[key] = function
    return function


# -- the lenient pass: same records, every misfit named ------------------------------


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r:.40}"


def _expected(what: str, value: Any, path: str, problems: list[str]) -> tuple[bool, Any]:
    problems.append(f"expected {what}, got {_shown(value)} @ {path}")
    return False, None


_WHAT = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "mapping": "an object",
    "timestamp": "an integer (epoch seconds)",
    "enum": "a string",
}


def _lenient(kind: _Kind, value: Any, path: str, problems: list[str]) -> tuple[bool, Any]:
    """``(True, structured)`` when ``value`` fits ``kind``, else ``(False, None)`` and problems."""
    tag = kind.tag
    if tag == "optional":
        if value is None:
            return True, None
        return _lenient(kind.inner, value, path, problems)
    if tag == "any":
        return True, value
    if tag == "str" and type(value) is str:
        return True, value
    if tag == "int" and type(value) is int:
        return True, value
    if tag == "float" and type(value) in (int, float):
        return True, value
    if tag == "bool" and type(value) is bool:
        return True, value
    if tag == "mapping" and isinstance(value, dict):
        return True, value
    if tag == "timestamp" and type(value) is int:
        return True, Timestamp(value)
    if tag == "enum" and type(value) is str:
        return True, kind.inner(value)
    if tag in ("date", "datetime"):
        parse = dt.date.fromisoformat if tag == "date" else dt.datetime.fromisoformat
        if type(value) is str:
            try:
                return True, parse(value)
            except ValueError:
                pass
        what = "an ISO date (YYYY-MM-DD)" if tag == "date" else "an ISO 8601 timestamp"
        return _expected(what, value, path, problems)
    if tag == "record":
        if isinstance(value, dict):
            return True, _lenient_record(kind.inner, value, path, problems)
        return _expected("an object", value, path, problems)
    if tag == "tuple":
        if not isinstance(value, list):
            return _expected("a list", value, path, problems)
        items = []
        fits = True
        for index, item in enumerate(value):
            where = f"{path}[{index}]"
            if kind.inner.tag == "record" and not isinstance(item, dict):
                # No hole in a tuple: an item that is not an object is an empty record.
                _expected("an object", item, where, problems)
                items.append(_empty_record(kind.inner.inner))
                continue
            ok, result = _lenient(kind.inner, item, where, problems)
            fits = fits and ok
            items.append(result)
        return (True, tuple(items)) if fits else (False, None)
    return _expected(_WHAT[tag], value, path, problems)


def _lenient_record(
    cls: type[Record], value: dict[str, Any], path: str, problems: list[str]
) -> Record:
    record = object.__new__(cls)
    unfit: dict[str, Any] = {}
    for field in _plan(cls):
        where = f"{path}.{field.name}"
        if field.name not in value:
            if field.required:
                problems.append(f"required field missing @ {where}")
            if not field.required or field.kind.tag == "optional":
                object.__setattr__(record, field.name, None)  # None fits: no need to raise
            continue
        raw = value[field.name]
        ok, result = _lenient(field.kind, raw, where, problems)
        if ok:
            object.__setattr__(record, field.name, result)
        else:
            unfit[field.name] = raw
    if unfit:
        object.__setattr__(record, "unfit", unfit)
    known = _known(cls)
    if value.keys() != known:
        _finish(record, value, known)
    return record


def _empty_record(cls: type[Record]) -> Record:
    """A record where every field reads as absent (its ``data`` was not an object)."""
    record = object.__new__(cls)
    object.__setattr__(record, "_absent", _known(cls))
    return record


# -- entry points --------------------------------------------------------------------


def _top_kind(record: Any) -> _Kind:
    kind = _kinds.get(record)
    if kind is None:
        kind = _kinds[record] = _kind(record)
    return kind


_kinds: dict[Any, _Kind] = {}
_fast_by_record: dict[Any, Callable[[Any], Any]] = {}


def structure_lenient(
    data: Any, record: Any, *, path: str = "$.data"
) -> tuple[Any, tuple[str, ...]]:
    """Build ``record`` (a record class or ``tuple[Class, ...]``) from ``data``, never failing.

    Returns the structured value and the problems: one line per JSON path
    whose value did not fit (empty when all did). What did not fit is kept in
    the ``unfit`` mapping of the record holding it; ``data`` that is not an
    object gives a record whose every field reads as absent.
    """
    fast = _fast_by_record.get(record)
    if fast is None:
        fast = _fast_by_record[record] = _fast_function(_top_kind(record))
    try:
        return fast(data), ()
    except Exception:
        pass
    kind = _top_kind(record)
    problems: list[str] = []
    if kind.tag == "record":
        if isinstance(data, dict):
            return _lenient_record(kind.inner, data, path, problems), tuple(problems)
        _expected("an object", data, path, problems)
        return _empty_record(kind.inner), tuple(problems)
    ok, result = _lenient(kind, data, path, problems)
    return (result if ok else ()), tuple(problems)


def structure(data: Any, record: Any, *, operation_id: str | None = None, url: str = "") -> Any:
    """Build ``record`` from ``data``, strictly.

    Raises:
        UnexpectedPayloadError: the payload does not fit; ``problems`` names each JSON path.
    """
    value, problems = structure_lenient(data, record)
    if problems:
        raise misfit_error(record, problems, operation_id=operation_id, url=url)
    return value


def misfit_error(
    record: Any,
    problems: tuple[str, ...],
    *,
    operation_id: str | None,
    url: str = "",
    response: Any = None,
) -> UnexpectedPayloadError:
    """The error of a strict call whose answer did not fit ``record``."""
    name = "the JSON:API envelope" if record is None else getattr(record, "__name__", repr(record))
    where = operation_id or "the answer"
    shown = "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
    return UnexpectedPayloadError(
        f"{where}: the payload does not fit {name}: {shown}",
        problems=problems,
        operation_id=operation_id,
        url=url,
        response=response,
    )


# -- back to JSON --------------------------------------------------------------------

converter = cattrs.Converter()
converter.register_unstructure_hook(dt.date, lambda value: value.isoformat())
converter.register_unstructure_hook(dt.datetime, lambda value: value.isoformat())
converter.register_unstructure_hook(Timestamp, int)
# Plain strings again (the members are str too, which cattrs would pass through as they are).
converter.register_unstructure_hook(OpenEnum, lambda member: str(member._value_))


def _is_record(type_: Any) -> bool:
    return isinstance(type_, type) and issubclass(type_, Record) and type_ is not Record


def _record_unstructure(cls: type[Record]) -> Callable[[Record], dict[str, Any]]:
    fields = [(f.name, f.type) for f in attrs.fields(attrs.resolve_types(cls))]
    fields = [(name, type_) for name, type_ in fields if name not in _HIDDEN]

    def unstructure_record(record: Record) -> dict[str, Any]:
        absent = record._absent
        unfit = record.unfit
        out: dict[str, Any] = {}
        for name, type_ in fields:
            if name in absent:
                continue
            if name in unfit:
                out[name] = unfit[name]  # as the server sent it
            else:
                out[name] = converter.unstructure(getattr(record, name), type_)
        out.update(record.extra)
        return out

    return unstructure_record


converter.register_unstructure_hook_factory(_is_record, _record_unstructure)


def unstructure(value: Any) -> Any:
    """Turn a record (or a tuple of records) back into JSON-ready data, extra fields included.

    Values that did not fit come back as the server sent them.
    """
    return converter.unstructure(value)
