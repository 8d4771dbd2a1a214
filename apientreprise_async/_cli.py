"""The ``apientreprise`` command (``cli`` extra): demo, batch, call, privileges, emulator.

Parsing is argparse (the standard library is enough for six subcommands);
display is rich. The token is read from ``API_ENTREPRISE_TOKEN`` or from a
file (``--token-file``), never from an argument value: argument lists are
visible to every user of the machine (``ps``, ``/proc``). Every failure ends
with one line on stderr and an exit code from the table in ``--help``, never
a traceback.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import base64
import copy
import csv
import functools
import json
import logging
import os
import pathlib
import secrets
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import anyio

from ._auth import TokenInfo, fingerprint
from ._batch import Batch, Input
from ._catalogue import Endpoint, all_endpoints, get_endpoint
from ._client import AsyncClient
from ._errors import (
    ApiEntrepriseError,
    ApiError,
    AuthenticationError,
    AuthorizationError,
    InvalidParameterError,
    MissingParameterError,
    NotFoundError,
    TokenExpiredError,
    TransportError,
    UnknownOperationError,
)
from ._governor import Governor, Limits
from ._identifiers import validate_traceability
from .backends import InMemoryBackend

try:
    from rich import box
    from rich.console import Console
    from rich.json import JSON
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table
    from rich.text import Text

    _MISSING_EXTRA: str | None = None
except ImportError as exc:  # pragma: no cover - depends on the environment
    _MISSING_EXTRA = exc.name or "rich"

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1  # some inputs of a batch, or the single call, ended in error
EXIT_USAGE = 2  # argparse's own code for a bad command line
EXIT_CONFIG = 3  # no token, unreadable file, missing extra, bad option value
EXIT_AUTH = 4  # the server refused the token (401) or the privilege (403)
EXIT_UNREACHABLE = 5  # no answer from the server
EXIT_INTERRUPTED = 130

_EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}    success
  {EXIT_FAILED}    the call failed, or some inputs of the batch ended in error
  {EXIT_USAGE}    bad command line
  {EXIT_CONFIG}    configuration: token (missing, unreadable, expired), traceability,
       input file or column, option value, missing extra
  {EXIT_AUTH}    the server refused the token (as expired: 3) or a privilege (401, 403)
  {EXIT_UNREACHABLE}    no answer from the server
  {EXIT_INTERRUPTED}  interrupted

A batch stopped by a failure that is not about one input (codes 3, 4, 5)
writes no line for the inputs it did not finish: fix the cause and rerun
with the same --output to go on.

The token comes from API_ENTREPRISE_TOKEN or --token-file, never from an
argument. Traceability defaults come from API_ENTREPRISE_RECIPIENT,
API_ENTREPRISE_CONTEXT and API_ENTREPRISE_OBJECT. The library's log records
go to stderr with APIENTREPRISE_LOG=INFO (or DEBUG, WARNING).
"""

_DEMO_OPERATION = "api_entreprise_v4_insee_unites_legales"
_DEMO_RECIPIENT = "13002526500013"


class _UsageError(Exception):
    """argparse refused the command line (raised instead of printing and exiting)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (by :func:`main`, values hidden)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self, message)


# Arguments longer than this are never repeated in a message: a token pasted on
# the command line by mistake must not be printed again (terminals, CI logs).
_SHOWN_ARGUMENT = 16


def _hidden(text: str) -> str:
    """An argument as messages may show it: itself when short, else its length only."""
    if len(text) <= _SHOWN_ARGUMENT and text.isprintable():
        return text
    return f"<{len(text)} characters, not shown>"


def _redact(message: str, arguments: Sequence[str]) -> str:
    """``message`` with every long argument value replaced by its length."""
    values = set()
    for argument in arguments:
        values.add(argument)
        if argument.startswith("-") and "=" in argument:
            values.add(argument.split("=", 1)[1])
    for value in sorted(values, key=len, reverse=True):
        if len(value) > _SHOWN_ARGUMENT or not value.isprintable():
            message = message.replace(value, _hidden(value))
    return message


class CliError(Exception):
    """A failure the command reports in one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code


# -- arguments -------------------------------------------------------------------------


def _add_connection(parser: argparse.ArgumentParser, *, traceability: bool = True) -> None:
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="read the token from FILE (default: the API_ENTREPRISE_TOKEN variable)",
    )
    parser.add_argument(
        "--env",
        choices=("production", "staging"),
        help="API environment (default: API_ENTREPRISE_ENV, else production)",
    )
    parser.add_argument(
        "--base-url", help="any base URL, e.g. an emulator (default: API_ENTREPRISE_BASE_URL)"
    )
    if traceability:
        parser.add_argument("--recipient", help="SIRET of the administration served")
        parser.add_argument("--context", help="the business context of the calls")
        parser.add_argument("--object", help="the file or reason of the calls (50 characters)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="apientreprise",
        description="API Entreprise from the command line, within its rate limits.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # or "--token" would quietly mean "--token-file"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )

    demo = command("demo", "run a batch against the built-in emulator (no token, no network)")
    demo.add_argument("--calls", type=int, default=2000, help="inputs to process (2000)")
    demo.add_argument(
        "--period", type=float, default=1.0, help="seconds standing for the API's minute (1.0)"
    )
    demo.add_argument("--output", metavar="FILE", help="also write the outcomes as JSON lines")
    demo.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="worker tasks (16: in process, the emulator shares the CPU with the client)",
    )
    demo.set_defaults(handler=_demo)

    batch = command("batch", "call one operation (or several) for every identifier of a file")
    batch.add_argument(
        "operation",
        help="operation id or Python name (insee.unites_legales); several separated by commas",
    )
    batch.add_argument(
        "--input", required=True, metavar="FILE", help="CSV, TXT (one id a line) or JSONL"
    )
    batch.add_argument(
        "--column",
        help="the CSV column or JSONL key holding the identifier "
        "(default: the column named siret, siren or after the operation's parameter)",
    )
    batch.add_argument(
        "--output", required=True, metavar="FILE", help="JSON-lines results; rerun to resume"
    )
    batch.add_argument(
        "--retry-errors",
        action="store_true",
        help="do again the inputs whose line in --output is an error worth retrying "
        "(401, 403, 409, 429, 5xx, no answer)",
    )
    batch.add_argument(
        "--progress-every",
        metavar="N[%]",
        default="60",
        help="off a terminal, print a progress line every N seconds, or every N %% "
        "of the inputs (60)",
    )
    batch.add_argument("--off-peak", metavar="HH:MM-HH:MM", help="only call in this Paris window")
    batch.add_argument("--concurrency", type=int, help="worker tasks (default: from the limits)")
    batch.add_argument("--fsync", action="store_true", help="fsync every line (power-cut safe)")
    batch.add_argument(
        "--period",
        type=float,
        default=60.0,
        help="rate-limit period in seconds: 60 for the API, less for a scaled emulator",
    )
    _add_connection(batch)
    batch.set_defaults(handler=_batch)

    call = command("call", "one call, printed as JSON")
    call.add_argument(
        "operation",
        nargs="?",
        help="operation id or Python name, e.g. insee.unites_legales (see --list)",
    )
    call.add_argument("id", nargs="?", help="the identifier (SIREN, SIRET...)")
    call.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another parameter (repeatable)",
    )
    call.add_argument(
        "--list", action="store_true", help="list the operations (id and Python name) and exit"
    )
    _add_connection(call)
    call.set_defaults(handler=_call)

    privileges = command("privileges", "the privileges the server grants the token")
    _add_connection(privileges, traceability=False)
    privileges.set_defaults(handler=_privileges)

    info = command("token-info", "subject, expiry and scopes read from the token (offline)")
    info.add_argument("--token-file", metavar="FILE", help="read the token from FILE")
    info.set_defaults(handler=_token_info)

    emulator = command("emulator", "serve the API Entreprise emulator on 127.0.0.1")
    emulator.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    emulator.add_argument(
        "--period", type=float, default=60.0, help="rate-limit period in seconds (60)"
    )
    emulator.add_argument(
        "--token-file",
        metavar="FILE",
        help="register the token in FILE (created with a new test token if absent)",
    )
    emulator.add_argument(
        "--latency", type=float, default=0.0, help="seconds each answer takes (0)"
    )
    emulator.add_argument(
        "--share-drifted",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of 200 answers whose payload drifted: a field nulled, removed or made an "
        "object, a new field added (0; 1: all)",
    )
    emulator.add_argument(
        "--seed", type=int, default=0, help="seeds the faults: same seed, same answers (0)"
    )
    emulator.set_defaults(handler=_emulator)
    return parser


# -- shared helpers ----------------------------------------------------------------------


def _read_token(token_file: str | None) -> str:
    if token_file:
        try:
            # utf-8-sig: Notepad and PowerShell start UTF-8 files with a byte order mark.
            token = pathlib.Path(token_file).read_text("utf-8-sig").strip()
        except OSError as exc:
            raise CliError(f"cannot read the token file {token_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise CliError(f"the token file {token_file} is not UTF-8 text") from None
        if not token:
            raise CliError(f"the token file {token_file} is empty")
        return token
    token = os.environ.get("API_ENTREPRISE_TOKEN", "").strip()
    if not token:
        raise CliError("no token: set API_ENTREPRISE_TOKEN or pass --token-file FILE")
    return token


def _traceability(args: argparse.Namespace, name: str) -> str | None:
    value = getattr(args, name, None) or os.environ.get(f"API_ENTREPRISE_{name.upper()}")
    return value or None


def _usable_token(token_file: str | None) -> str:
    """The token, refused here if it is known to be expired (the server would say 401)."""
    token = _read_token(token_file)
    info = TokenInfo.from_jwt(token)
    if info is not None and info.is_expired() and info.expires_at is not None:
        where = f"the token in {token_file}" if token_file else "the token"
        raise CliError(
            f"{where} expired on {info.expires_at:%Y-%m-%d %H:%M} UTC; ask for a new one"
        )
    return token


def _check_traceability(args: argparse.Namespace, endpoints: Sequence[Endpoint]) -> None:
    """Refuse missing or malformed traceability before anything is sent or written."""
    if not any(e.traceability for e in endpoints):
        return
    try:
        validate_traceability(
            _traceability(args, "recipient"),
            _traceability(args, "context"),
            _traceability(args, "object"),
        )
    except InvalidParameterError as exc:
        name = exc.parameter
        raise CliError(
            f"{exc}: pass --{name} or set API_ENTREPRISE_{name.upper()}"
            if isinstance(exc, MissingParameterError)
            else str(exc)
        ) from None


def _client(args: argparse.Namespace, **extra: Any) -> AsyncClient:
    try:
        return AsyncClient(
            _usable_token(args.token_file),
            environment=args.env,
            base_url=args.base_url,
            recipient=_traceability(args, "recipient"),
            context=_traceability(args, "context"),
            object=_traceability(args, "object"),
            **extra,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False)


@functools.cache
def _python_names() -> dict[str, str]:
    """``provider.method`` (as on the client) -> the operation id it calls by default.

    Read from the generated resource groups, so the command knows exactly
    the names the Python API has: a method taking ``version=`` calls its
    newest version that is not deprecated.
    """
    from . import _gen_resources

    tree = ast.parse(pathlib.Path(_gen_resources.__file__).read_text("utf-8"))
    groups: dict[str, str] = {}  # class name -> attribute on the client
    methods: dict[str, dict[str, list[str]]] = {}
    aliases: set[tuple[str, str]] = set()  # deprecated names, kept working
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        if node.name == "Resources":
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    groups[ast.unparse(item.annotation)] = item.target.id
            continue
        for item in node.body:
            if isinstance(item, ast.AsyncFunctionDef):
                ids = [
                    sub.value
                    for sub in ast.walk(item)
                    if isinstance(sub, ast.Constant)
                    and isinstance(sub.value, str)
                    and sub.value.startswith("api_entreprise_")
                ]
                if ids:
                    methods.setdefault(node.name, {})[item.name] = ids
                if "deprecated; use" in ast.unparse(item):
                    aliases.add((node.name, item.name))
    names: dict[str, str] = {"privileges": "api_entreprise_privileges"}
    for class_name, found in methods.items():
        group = groups.get(class_name)
        if group is None:
            continue
        # Deprecated aliases first: an operation's current name comes last and wins
        # wherever one name per operation is shown (`call --list`).
        for method, ids in sorted(found.items(), key=lambda m: (class_name, m[0]) not in aliases):
            endpoints = [get_endpoint(i) for i in ids]
            current = [e for e in endpoints if not e.deprecated] or endpoints
            names[f"{group}.{method}"] = max(current, key=lambda e: e.version).operation_id
    return names


def _operation(name: str) -> Endpoint:
    """An operation by id or by Python name (``insee.unites_legales``)."""
    try:
        return get_endpoint(name)
    except UnknownOperationError:
        pass
    operation_id = _python_names().get(name)
    if operation_id is not None:
        return get_endpoint(operation_id)
    known = [e.operation_id for e in all_endpoints()] + list(_python_names())
    close = [k for k in known if name and name in k][:3]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise CliError(
        f"unknown operation {_hidden(name)!r}{hint}; see `apientreprise call --list`"
    ) from None


# -- inputs --------------------------------------------------------------------------------


def _count_inputs(path: pathlib.Path) -> int:
    """Lines holding an input (a quick first pass, for the progress bar's total)."""
    with path.open("rb") as lines:
        count = sum(1 for line in lines if line.strip() and not line.startswith(b"#"))
    return max(0, count - 1) if path.suffix.lower() == ".csv" else count


def _open_inputs(
    path: pathlib.Path, column: str | None, endpoints: Sequence[Endpoint]
) -> Iterator[Input]:
    """Check the file's header now; return its inputs, read one at a time later.

    Everything that can be judged from the start of the file (encoding, CSV
    header, the identifier column) fails here, before the batch writes
    anything.
    """
    suffix = path.suffix.lower()
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            head = stream.read(4096)
    except UnicodeDecodeError:
        raise CliError(f"{path}: not UTF-8 text") from None
    if suffix == ".csv":
        try:
            dialect: Any = csv.Sniffer().sniff(head, delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
        first = next(csv.reader(head.splitlines()[:1], dialect=dialect), [])
        name = _csv_column(path, first, column, endpoints)
        return _read_csv(path, name, dialect)
    if suffix in (".jsonl", ".ndjson"):
        if column is not None:
            _check_jsonl_key(path, head, column)
        return _read_jsonl(path, column)
    return _read_lines(path)


def _csv_column(
    path: pathlib.Path, fields: Sequence[str], column: str | None, endpoints: Sequence[Endpoint]
) -> str:
    """The column holding the identifier: the one named, or one whose name says so."""
    shown = ", ".join(repr(f) for f in fields) or "none"
    if not any(f.strip() for f in fields):
        raise CliError(f"{path}: no header line; the first line must name the columns")
    if column is not None:
        if column not in fields:
            raise CliError(f"{path}: no column {column!r} (columns: {shown})")
        return column
    wanted = ["siret", "siren", "id", "identifiant"]
    wanted += [p.name.lower() for e in endpoints for p in e.path_params]
    lowered = {f.lower().strip(): f for f in fields}
    for name in wanted:
        if name in lowered:
            return lowered[name]
    # "numero_siret", "SIRET établissement": one column whose name holds the word.
    for word in ("siret", "siren"):
        holding = [f for f in fields if word in f.lower()]
        if len(holding) == 1:
            return holding[0]
    raise CliError(
        f"{path}: no identifier column among {shown}; name it with --column "
        "(looked for siret, siren, id, identifiant)"
    )


def _check_jsonl_key(path: pathlib.Path, head: str, column: str) -> None:
    for line in head.splitlines()[:1]:
        try:
            value = json.loads(line)
        except ValueError:
            return  # reported with its line number when read
        if isinstance(value, dict) and column not in value:
            keys = ", ".join(repr(k) for k in value) or "none"
            raise CliError(f"{path}: no key {column!r} in the first line (keys: {keys})")


def _reading(path: pathlib.Path) -> Iterator[tuple[int, str]]:
    """Numbered lines of ``path``; a decoding error is a one-line failure."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            yield from enumerate(stream, start=1)
    except UnicodeDecodeError:
        raise CliError(f"{path}: not UTF-8 text") from None


def _read_csv(path: pathlib.Path, column: str, dialect: Any) -> Iterator[Input]:
    try:
        rows = csv.DictReader((line for _, line in _reading(path)), dialect=dialect)
        for row in rows:
            yield (row.get(column) or "").strip()
    except csv.Error as exc:
        raise CliError(f"{path}: not a readable CSV file ({exc})") from None


def _read_jsonl(path: pathlib.Path, column: str | None) -> Iterator[Input]:
    for number, line in _reading(path):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            raise CliError(f"{path}: line {number} is not JSON") from None
        if isinstance(value, dict):
            if column is not None:
                yield str(value.get(column, ""))
            else:
                yield value
        else:
            yield str(value)


def _read_lines(path: pathlib.Path) -> Iterator[Input]:
    for _, line in _reading(path):
        value = line.strip()
        if value and not value.startswith("#"):
            yield value


# -- progress and summary -------------------------------------------------------------


def _rate_column() -> ProgressColumn:
    """Outcomes per second, as rich estimates it over the last seconds."""

    # Defined here, not at import time, so a missing rich is reported by main().
    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("  --/s" if speed is None else f"{speed:6.1f}/s", style="cyan")

    return RateColumn()


class _Watch:
    """A progress bar fed by a running batch (outcomes, governor waits, 429s, pauses)."""

    def __init__(self, console: Console, batch: Batch, total: int | None, label: str) -> None:
        self.batch = batch
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            _rate_column(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            refresh_per_second=8,
        )
        self.task = self.progress.add_task(label, total=total, status="")

    def refresh(self, advance: int = 0) -> None:
        counters = self.batch.governor_counters()
        stats = self.batch.stats
        status = f"waits {counters.waits}  429 {counters.rate_limited}"
        if stats.closed_until is not None:
            status += f"  [yellow]paused until {stats.closed_until:%H:%M} ({stats.closed_reason})"
        self.progress.update(self.task, advance=advance, status=status)

    async def tick(self) -> None:
        """Keep the status fresh while no outcome arrives (a long pause)."""
        while True:
            await anyio.sleep(0.5)
            self.refresh()


def _summary(batch: Batch, elapsed: float, limit: int, period: float, title: str) -> Table:
    stats = batch.stats
    counters = batch.governor_counters()
    rate = counters.grants / elapsed if elapsed > 0 else 0.0
    table = Table(title=title, box=box.SIMPLE_HEAD, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("inputs done", f"{stats.done:,}")
    if stats.skipped:
        table.add_row("skipped (already in the output)", f"{stats.skipped:,}")
    if stats.resumed_errors:
        table.add_row("  error lines from earlier runs", f"{stats.resumed_errors:,}")
    table.add_row("  found", f"{stats.ok:,}")
    if stats.unfit:
        table.add_row("    not fitting their record (see problems)", f"{stats.unfit:,}")
    table.add_row("  not found (404)", f"{stats.not_found:,}")
    table.add_row("  invalid, refused locally", f"{stats.invalid:,}")
    table.add_row("  errors", f"{stats.errors:,}")
    table.add_row("calls sent", f"{counters.grants:,}")
    table.add_row("elapsed", f"{elapsed:.1f} s")
    table.add_row("throughput", f"{rate:.1f} calls/s; the limit: {limit} per {period:g} s")
    if counters.grants > limit:
        # The last window's calls can all leave at its start: n calls need at
        # least ceil(n / limit) - 1 periods.
        fastest = (-(-counters.grants // limit) - 1) * period
        table.add_row(
            "fastest the limit allows",
            f"{fastest:.1f} s for {counters.grants:,} calls; efficiency {fastest / elapsed:.0%}",
        )
    average = counters.wait_time / counters.waits if counters.waits else 0.0
    table.add_row(
        "waiting for the governor",
        f"{counters.waits:,} calls queued, {average:.2f} s each on average",
    )
    if stats.paused:
        table.add_row("paused (off-peak, maintenance)", f"{stats.paused:.0f} worker-seconds")
    table.add_row("429 received", f"{counters.rate_limited}")
    return table


class _Every:
    """When to print a progress line off a terminal: every N seconds, or every N %."""

    def __init__(self, spec: str) -> None:
        text = spec.strip()
        self.percent = text.endswith("%")
        try:
            value = float(text.rstrip("%s").strip())
        except ValueError:
            value = -1.0
        if not value > 0 or (self.percent and value > 100):
            raise CliError(
                f"--progress-every {spec!r}: give seconds (60) or a share of the inputs (5%)"
            )
        self.value = value


class _Lines:
    """Progress off a terminal (cron, a pipe): one plain line now and then, on stdout."""

    def __init__(
        self, batch: Batch, total: int | None, label: str, every: _Every, started: float
    ) -> None:
        self.batch = batch
        self.total = total
        self.label = label
        self.every = every
        self.started = started
        self.next_share = every.value

    def line(self) -> str:
        stats = self.batch.stats
        counters = self.batch.governor_counters()
        elapsed = time.monotonic() - self.started
        rate = stats.done / elapsed if elapsed > 0 else 0.0
        done = f"{stats.done:,}"
        if self.total:
            done += f"/{self.total:,} ({stats.done / self.total:.0%})"
        parts = [
            f"{self.label}: {done} done in {elapsed:,.0f} s, {rate:.1f}/s",
            f"found {stats.ok:,}",
            f"not found {stats.not_found:,}",
            f"invalid {stats.invalid:,}",
            f"errors {stats.errors:,}",
            f"429 {counters.rate_limited}",
        ]
        if self.total and rate > 0 and stats.done < self.total:
            left = round((self.total - stats.done) / rate)
            parts.append(f"ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}")
        if stats.closed_until is not None:
            parts.append(f"paused until {stats.closed_until:%H:%M} ({stats.closed_reason})")
        return ", ".join(parts)

    def emit(self) -> None:
        print(self.line(), flush=True)

    def advanced(self) -> None:
        """After an outcome: a line each time another N % of the inputs is done."""
        if not (self.every.percent and self.total):
            return
        share = 100 * self.batch.stats.done / self.total
        if share >= self.next_share:
            while self.next_share <= share:
                self.next_share += self.every.value
            self.emit()

    async def tick(self) -> None:
        """A line every N seconds, whatever happens (a long pause included)."""
        if self.every.percent:
            return
        while True:
            await anyio.sleep(self.every.value)
            self.emit()


async def _watch_batch(
    console: Console,
    batch: Batch,
    total: int | None,
    label: str,
    every: _Every | None = None,
) -> float:
    """Consume a batch under a progress bar (or progress lines); return the elapsed seconds."""
    started = time.monotonic()
    if not console.is_terminal and every is not None:
        lines = _Lines(batch, total, label, every, started)
        async with anyio.create_task_group() as group:
            group.start_soon(lines.tick)
            async with batch as outcomes:
                async for _outcome in outcomes:
                    lines.advanced()
            group.cancel_scope.cancel()
        return time.monotonic() - started
    watch = _Watch(console, batch, total, label)
    with watch.progress:
        async with anyio.create_task_group() as group:
            group.start_soon(watch.tick)
            async with batch as outcomes:
                async for _outcome in outcomes:
                    watch.refresh(advance=1)
            group.cancel_scope.cancel()
        watch.refresh()
    return time.monotonic() - started


def _failed_line(batch: Batch, output: str) -> str | None:
    """The stderr line of a batch with failed inputs, in the summary's words."""
    stats = batch.stats
    parts = []
    if stats.errors:
        parts.append(f"{stats.errors:,} ended in error")
    if stats.invalid:
        parts.append(f"{stats.invalid:,} invalid, refused locally")
    if stats.resumed_errors:
        parts.append(f"{stats.resumed_errors:,} in error from an earlier run")
    if not parts:
        return None
    return f"inputs: {' and '.join(parts)}; see {output}" + (
        " (--retry-errors does the errors worth retrying again)"
        if stats.errors or stats.resumed_errors
        else ""
    )


def _bucket_limit(governor: Governor, operations: Sequence[str]) -> int:
    limits = governor.limits
    buckets = dict(limits.bucket_for(get_endpoint(name)) for name in operations)
    return min(sum(buckets.values()), limits.ip)


# -- commands ----------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from .testing import Emulator

    if args.calls < 1 or args.period <= 0:
        raise CliError("--calls and --period must be positive")
    token = _test_token("demo")
    emulator = Emulator(period=args.period)
    emulator.add_token(token)
    sirens = _demo_inputs(emulator, args.calls)
    console = _console()
    console.print(
        f"[bold]apientreprise demo[/]: {args.calls:,} SIRENs through {_DEMO_OPERATION}, "
        f"against the built-in emulator with a {args.period:g} s 'minute' "
        "(no token, no network)."
    )
    console.print(
        "The JSON group allows 250 calls per period and per token; the governor keeps "
        "every window under it.\n"
    )

    async def run() -> tuple[Batch, float]:
        governor = Governor(Limits(period=args.period), backend=InMemoryBackend())
        async with AsyncClient(
            token,
            base_url="https://entreprise.api.gouv.fr",
            transport=emulator.transport(),
            governor=governor,
            recipient=_DEMO_RECIPIENT,
            context="Démonstration",
            object="apientreprise demo",
        ) as client:
            batch = client.batch(
                _DEMO_OPERATION, sirens, output=args.output, concurrency=args.concurrency
            )
            elapsed = await _watch_batch(console, batch, len(sirens), "demo")
            return batch, elapsed

    batch, elapsed = anyio.run(run)
    console.print(_summary(batch, elapsed, 250, args.period, "Summary"))
    heaviest = emulator.max_calls_in_a_window()
    console.print(
        f"The emulator counted at most {heaviest} calls in one {args.period:g} s window "
        f"(limit 250); {len(emulator.calls(status=429))} answers were 429."
    )
    return EXIT_OK


def _test_token(subject: str) -> str:
    """A JWT-shaped token for the emulator: fake, unsigned, worth nothing elsewhere."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"sub": subject, "iat": now, "exp": now + 365 * 86400, "jti": secrets.token_hex(8)}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.ZW11bGF0b3I"


def _luhn_complete(prefix: str) -> str:
    """``prefix`` plus the digit that makes it pass the Luhn check."""
    for digit in "0123456789":
        candidate = prefix + digit
        total = 0
        for position, char in enumerate(reversed(candidate)):
            value = int(char) * (2 if position % 2 else 1)
            total += value - 9 if value > 9 else value
        if total % 10 == 0:
            return candidate
    raise AssertionError("unreachable: one digit always completes a Luhn number")


_DEMO_WORDS = (
    ("BOULANGERIE", "TRANSPORTS", "ATELIERS", "MENUISERIE", "IMPRIMERIE", "GARAGE", "CABINET"),
    ("DU LAC", "DES TILLEULS", "DE LA VALLEE", "DU PORT", "DES CORDELIERS", "DU MOULIN"),
)


def _demo_inputs(emulator: Any, calls: int) -> list[str]:
    """Fictional SIRENs: a fifth known to the emulator, 1 % malformed, the rest unknown.

    Known companies are registered as cases cloned from a built-in answer;
    their number is capped because the emulator matches cases one by one.
    """
    from .testing import COMPANIES
    from .testing._data import builtin_answer

    endpoint = get_endpoint(_DEMO_OPERATION)
    template = builtin_answer(
        endpoint, {"siren": COMPANIES[0].siren}, "https://entreprise.api.gouv.fr", _no_document
    )
    assert template is not None
    known = min(calls // 5, 400)
    sirens: list[str] = []
    for n in range(calls):
        if n % 100 == 99:
            sirens.append(f"{n:09d}"[:8] + "X")  # malformed: refused before any call
            continue
        siren = _luhn_complete(f"{(90_000_000 + n * 7919) % 100_000_000:08d}")
        sirens.append(siren)
        if n % 5 == 0 and len(sirens) // 5 < known:
            payload = copy.deepcopy(template[1])
            words = _DEMO_WORDS[0][n % 7], _DEMO_WORDS[1][n % 6]
            data = payload["data"]
            data["siren"] = siren
            data["siret_siege_social"] = _luhn_complete(siren + "0001")
            data["personne_morale_attributs"] = {"raison_sociale": " ".join(words), "sigle": None}
            emulator.add_case(_DEMO_OPERATION, {"siren": siren}, 200, payload)
    return sirens


def _no_document(title: str, subject: str) -> tuple[str, int]:
    raise AssertionError("the demo operation has no document")


def _batch(args: argparse.Namespace) -> int:
    # Everything that can be checked before the first call is, so that a
    # configuration mistake costs neither a call nor a line of the output.
    endpoints = [_operation(n.strip()) for n in args.operation.split(",") if n.strip()]
    if not endpoints:
        raise CliError("no operation given", EXIT_USAGE)
    operations = [e.operation_id for e in endpoints]
    path = pathlib.Path(args.input)
    if not path.is_file():
        raise CliError(f"no input file {path}")
    if args.period <= 0:
        raise CliError("--period must be positive")
    if args.concurrency is not None and args.concurrency < 1:
        raise CliError("--concurrency must be at least 1")
    every = _Every(args.progress_every)
    output = pathlib.Path(args.output)
    if output.is_dir():
        raise CliError(f"--output {output} is a directory")
    if not output.parent.is_dir():
        raise CliError(f"--output {output}: no directory {output.parent}")
    inputs = _open_inputs(path, args.column, endpoints)
    _check_traceability(args, endpoints)
    total = _count_inputs(path) * len(operations)
    console = _console()
    governor = Governor(Limits(period=args.period))
    client = _client(args, governor=governor)
    existed = output.exists()
    state: dict[str, Any] = {}

    async def run() -> None:
        async with client:
            try:
                batch = client.batch(
                    operations,
                    inputs,
                    output=output,
                    off_peak=args.off_peak,
                    concurrency=args.concurrency,
                    fsync=args.fsync,
                    retry_errors=args.retry_errors,
                )
            except ValueError as exc:
                raise CliError(str(exc)) from None
            state["batch"] = batch
            state["elapsed"] = await _watch_batch(console, batch, total or None, "batch", every)

    try:
        anyio.run(run)
    except BaseException:
        # Nothing written: leave no empty file behind, as if the run never was.
        if not existed and output.is_file() and output.stat().st_size == 0:
            output.unlink()
        batch = state.get("batch")
        if batch is not None and batch.stats.done:
            console.print(f"stopped after {batch.stats.done:,} outcomes written to {output}")
        raise
    batch = state["batch"]
    limit = _bucket_limit(governor, operations)
    console.print(_summary(batch, state["elapsed"], limit, args.period, f"Summary → {output}"))
    failed = _failed_line(batch, args.output)
    if failed:
        _fail_line(failed)
        return EXIT_FAILED
    return EXIT_OK


def _call(args: argparse.Namespace) -> int:
    console = _console()
    if args.list:
        by_id = {op: name for name, op in _python_names().items()}
        for endpoint in all_endpoints():
            name = by_id.get(endpoint.operation_id, "")
            print(f"{endpoint.operation_id}\t{name}".rstrip(), flush=False)
        sys.stdout.flush()
        return EXIT_OK
    if not args.operation:
        raise CliError(
            "give an operation (an id or a Python name such as insee.unites_legales); "
            "`apientreprise call --list` lists them",
            EXIT_USAGE,
        )
    endpoint = _operation(args.operation)
    params: dict[str, Any] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--param {_hidden(item)!r}: expected NAME=VALUE")
        params[name.strip()] = value
    if args.id is not None:
        if not endpoint.path_params:
            raise CliError(f"{endpoint.operation_id} takes no identifier")
        params.setdefault(endpoint.path_params[0].name, args.id)
    _check_traceability(args, [endpoint])
    client = _client(args)

    async def run() -> Any:
        async with client:
            return (await client.call(endpoint.operation_id, **params)).raw

    body = anyio.run(run)
    _print_json(console, body)
    return EXIT_OK


def _print_json(console: Console, body: Any) -> None:
    text = json.dumps(body, ensure_ascii=False, indent=2)
    if console.is_terminal:
        console.print(JSON(text))
    else:
        print(text)  # plain JSON when piped, for jq and friends


def _privileges(args: argparse.Namespace) -> int:
    client = _client(args)

    async def run() -> tuple[str, ...]:
        async with client:
            return (await client.privileges()).data.privileges

    granted = anyio.run(run)
    console = _console()
    if not console.is_terminal:
        # Piped: whole ids, one a line, for grep and friends (a table would cut them).
        print("\n".join(granted), flush=True)
        return EXIT_OK
    table = Table(title=f"{len(granted)} privileges", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("privilege")
    for name in granted:
        table.add_row(name)
    console.print(table)
    return EXIT_OK


def _token_info(args: argparse.Namespace) -> int:
    token = _read_token(args.token_file)
    info = TokenInfo.from_jwt(token)
    console = _console()
    table = Table(box=box.SIMPLE_HEAD, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("fingerprint", fingerprint(token)[:16])
    if info is None:
        table.add_row("format", "not a JWT: nothing more can be read offline")
        console.print(table)
        return EXIT_OK
    table.add_row("subject", info.subject or "-")
    table.add_row("token id", info.token_id or "-")
    if info.issued_at is not None:
        table.add_row("issued", f"{info.issued_at:%Y-%m-%d %H:%M} UTC")
    left = info.expires_in()
    if info.expires_at is None or left is None:
        table.add_row("expires", "never (no exp claim)")
    else:
        days = left.total_seconds() / 86400
        state = "[red]expired" if days <= 0 else f"in {days:.0f} days"
        table.add_row("expires", f"{info.expires_at:%Y-%m-%d %H:%M} UTC ({state})")
    table.add_row("scopes", "\n".join(info.scopes) or "-")
    console.print(table)
    return EXIT_FAILED if info.is_expired() else EXIT_OK


def _emulator(args: argparse.Namespace) -> int:
    from .testing import Emulator, Faults

    if args.period <= 0 or args.latency < 0:
        raise CliError("--period must be positive and --latency not negative")
    if not 0 <= args.share_drifted <= 1:
        raise CliError("--share-drifted must be between 0 and 1")
    faults = Faults(latency=args.latency, share_drifted=args.share_drifted)
    emulator = Emulator(period=args.period, faults=faults, seed=args.seed)
    token_source = "API_ENTREPRISE_TOKEN"
    if args.token_file:
        path = pathlib.Path(args.token_file)
        if not path.exists():
            path.write_text(_test_token("emulator") + "\n", "utf-8")
            path.chmod(0o600)
        token = _read_token(args.token_file)
        token_source = str(path)
    else:
        token = _read_token(None)
    emulator.add_token(token)
    try:
        server = emulator.serve(port=args.port)
    except OSError as exc:
        raise CliError(f"cannot listen on 127.0.0.1:{args.port}: {exc.strerror}") from None
    print(f"API Entreprise emulator on {server.url}", flush=True)
    print(
        f"token: from {token_source}; use API_ENTREPRISE_BASE_URL={server.url}; Ctrl-C stops",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return EXIT_OK


# -- entry point ------------------------------------------------------------------------------


def _fail_line(message: str) -> None:
    print(f"apientreprise: {message}", file=sys.stderr, flush=True)


def _api_failure(exc: ApiEntrepriseError) -> tuple[str, int]:
    """One line and an exit code for an error of the library."""
    if isinstance(exc, TokenExpiredError) or (
        isinstance(exc, AuthenticationError) and exc.reason == "expired"
    ):
        code = EXIT_CONFIG  # the token file needs a new token, whoever noticed
    elif isinstance(exc, AuthenticationError | AuthorizationError):
        code = EXIT_AUTH
    elif isinstance(exc, TransportError):
        code = EXIT_UNREACHABLE
    elif isinstance(exc, InvalidParameterError):
        code = EXIT_CONFIG
    else:
        code = EXIT_FAILED
    if isinstance(exc, ApiError):
        label = "not found" if isinstance(exc, NotFoundError) else f"HTTP {exc.http_status}"
        parts = [exc.first_error_code, exc.first_error_detail or exc.first_error_title]
        detail = " ".join(p for p in parts if p) or str(exc)
        return f"{label}: {detail}", code
    # The first public class: private ones (a silence) are the library's business.
    name = next(c.__name__ for c in type(exc).__mro__ if not c.__name__.startswith("_"))
    first_line = str(exc).splitlines()[0] if str(exc) else name
    if isinstance(exc, TransportError):
        return f"no answer from the server ({name}): {first_line}", code
    return f"{name}: {first_line}", code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script exits with it)."""
    if _MISSING_EXTRA is not None:
        _fail_line(
            f"the command line needs {_MISSING_EXTRA}: pip install 'apientreprise_async[cli]'"
        )
        return EXIT_CONFIG
    arguments = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--token" or a.startswith("--token=") for a in arguments):
        # Refused before argparse, whose error message would echo the value.
        _fail_line(
            "the token is never an argument (other users can read argument lists): "
            "set API_ENTREPRISE_TOKEN or pass --token-file FILE"
        )
        return EXIT_USAGE
    try:
        args = _parser().parse_args(arguments)
    except _UsageError as exc:
        # argparse quotes the offending values; one may be a token pasted by mistake.
        prog = exc.parser.prog
        message = _redact(exc.message, arguments)
        print(f"{prog}: {message} (see {prog} --help)", file=sys.stderr, flush=True)
        return EXIT_USAGE
    _quiet_library()
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except BaseException as exc:  # every failure becomes one line
        if isinstance(exc, SystemExit):
            raise
        message, code = _failure(_root_cause(exc))
        _fail_line(message)
        return code


def _quiet_library() -> None:
    """Log records only on request; a warning of the library is one line, not two."""
    level = os.environ.get("APIENTREPRISE_LOG", "").strip().upper()
    logger = logging.getLogger("apientreprise_async")
    if level in ("DEBUG", "INFO", "WARNING", "ERROR"):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("apientreprise: %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)
    else:
        # Without it, Python's last-resort handler would print the library's
        # warnings (a silent server, a learned limit) around the failure line.
        logger.addHandler(logging.NullHandler())

    def show(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        _fail_line(f"warning: {message}")

    warnings.showwarning = show


def _root_cause(exc: BaseException) -> BaseException:
    """The first real error inside task-group wrappers (cancellations are its echoes)."""
    while isinstance(exc, BaseExceptionGroup):
        # The commands run on asyncio (anyio's default backend).
        inner = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = (inner or list(exc.exceptions))[0]
    return exc


def _failure(exc: BaseException) -> tuple[str, int]:
    """One line and an exit code for whatever stopped the command."""
    if isinstance(exc, CliError):
        return str(exc), exc.code
    if isinstance(exc, ApiEntrepriseError):
        return _api_failure(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), EXIT_CONFIG
    if isinstance(exc, ValueError):
        return str(exc), EXIT_CONFIG
    if os.environ.get("APIENTREPRISE_TRACEBACK"):
        raise exc
    # A bug of ours, not the user's: still one line, and how to see more.
    return (
        f"internal error {type(exc).__name__}: {exc} (set APIENTREPRISE_TRACEBACK=1 to see where)",
        EXIT_FAILED,
    )
