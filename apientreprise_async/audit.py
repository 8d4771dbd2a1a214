"""Audit trail: one immutable record per call attempt, and the sinks that keep them.

API Entreprise users must be able to justify every access (that is what the
``object`` parameter is for). Give ``AsyncClient(audit=sink)`` any callable
taking an :class:`AuditRecord`; two sinks ship here. A record never holds the
token nor any response data.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, Literal, Protocol

import attrs

__all__ = [
    "AuditError",
    "AuditErrors",
    "AuditRecord",
    "AuditSink",
    "JsonLinesAuditSink",
    "LoggingAuditSink",
]


class AuditError(Exception):
    """An audit sink failed; with ``audit_errors="raise"`` the call fails with it."""


@attrs.frozen
class AuditRecord:
    """What happened to one call attempt.

    Attributes:
        timestamp: when the attempt ended (UTC).
        operation_id: the catalogue operation ("" for an unknown path).
        entity_id: the first path parameter (SIREN, SIRET, RNA...), when any.
        context, recipient, object: the traceability parameters sent.
        user, case: optional caller references (who asked, for which file).
        outcome: ``"ok"``, ``"http_<status>"``, ``"refused"`` (local) or the error class.
        http_status: status of the answer, ``None`` when there was none.
        error_codes: the API's error codes, or the local error class.
        duration: seconds from the start of the attempt to its end.
        governor_wait: seconds spent waiting for the governor's admission.
        attempt: 1 for the first attempt of a call, 2 for its first retry...
        coalesced: the call shared the answer of an identical call in flight.
        request_id: the server's ``X-Request-ID``.
        unfit_paths: JSON paths of a 2xx answer whose value did not fit the
            record (list indices folded as ``[]``; the values are not kept here).
    """

    timestamp: dt.datetime
    operation_id: str
    entity_id: str | None
    context: str | None
    recipient: str | None
    object: str | None
    outcome: str
    http_status: int | None = None
    error_codes: tuple[str, ...] = ()
    duration: float = 0.0
    governor_wait: float = 0.0
    attempt: int = 1
    coalesced: bool = False
    user: str | None = None
    case: str | None = None
    request_id: str | None = None
    unfit_paths: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready mapping (timestamp in ISO 8601)."""
        out = attrs.asdict(self)
        out["timestamp"] = self.timestamp.isoformat()
        out["error_codes"] = list(self.error_codes)
        out["unfit_paths"] = list(self.unfit_paths)
        return out


class AuditSink(Protocol):
    """Anything that can keep an :class:`AuditRecord` (called in the event loop: be quick)."""

    def __call__(self, record: AuditRecord) -> None:
        """Keep one record; raise to signal failure."""
        ...


class JsonLinesAuditSink:
    """Append records as JSON lines to a file, flushed after each one.

    Rotation-safe: when logrotate (or anyone) moves or deletes the file, the
    next record reopens the path instead of writing into the old inode. Safe
    for concurrent writers of one process (a lock serialises each line).
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = os.fspath(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._file: Any = None
        self._inode: tuple[int, int] | None = None

    def _open(self) -> None:
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (kept open on purpose)
        stat = os.fstat(self._file.fileno())
        self._inode = (stat.st_dev, stat.st_ino)

    def _rotated(self) -> bool:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (stat.st_dev, stat.st_ino) != self._inode

    def __call__(self, record: AuditRecord) -> None:
        """Write one line and flush it."""
        line = json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None or self._rotated():
                self.close_unlocked()
                self._open()
            self._file.write(line)
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())

    def close_unlocked(self) -> None:
        """Close the file; the caller holds the lock."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        """Close the file (a later record reopens it)."""
        with self._lock:
            self.close_unlocked()

    def __enter__(self) -> JsonLinesAuditSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LoggingAuditSink:
    """Send records to a :mod:`logging` logger, fields in ``extra`` for JSON formatters."""

    def __init__(
        self, logger: logging.Logger | str = "apientreprise_async.audit", level: int = logging.INFO
    ) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level

    def __call__(self, record: AuditRecord) -> None:
        """Log one record."""
        self.logger.log(
            self.level,
            "%s %s %s attempt=%d object=%r",
            record.operation_id or "-",
            record.entity_id or "-",
            record.outcome,
            record.attempt,
            record.object,
            extra={"audit": record.to_json()},
        )


AuditErrors = Literal["raise", "log"]


def _emit(
    sink: AuditSink | None, record: AuditRecord, policy: AuditErrors, log: logging.Logger
) -> None:
    """Give ``record`` to ``sink``; on failure raise :class:`AuditError` or log, per ``policy``."""
    if sink is None:
        return
    try:
        sink(record)
    except Exception as exc:
        if policy == "raise":
            raise AuditError(
                f"the audit sink failed ({type(exc).__name__}: {exc}); "
                f"the access to {record.operation_id or 'the API'} is not audited"
            ) from exc
        log.error(
            "audit sink failed (%s); record lost: %s",
            type(exc).__name__,
            json.dumps(record.to_json(), ensure_ascii=False),
            extra={"audit_failure": True},
        )


#: Longest text of a caller's value kept in a record (a refused input may be huge).
_MAX_FIELD = 256


def _field(value: Any) -> str | None:
    """A caller's value as a record keeps it: text, cut to a sane length.

    ``str()`` of a 5,000-digit int raises, and a refused input may be
    anything: an audit record must be written whatever it was.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value if len(value) <= _MAX_FIELD else value[:_MAX_FIELD] + "..."
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if value.bit_length() <= 128 else f"<int of {value.bit_length()} bits>"
    return f"<{type(value).__name__}>"


def _entity_of(path_values: Mapping[str, Any]) -> str | None:
    """The identifier a call is about: its first path parameter."""
    for value in path_values.values():
        return _field(value)
    return None
