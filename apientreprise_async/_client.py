"""``AsyncClient``: configuration, validation, the governor, one HTTP pool, error mapping."""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import functools
import logging
import os
import pathlib
import re
import secrets
import time
import traceback
import warnings
from collections.abc import AsyncIterator, Collection, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Self, Unpack

import anyio
import attrs

# httpx imports httpcore, and httpcore imports trio (when installed), only once
# the first client is built. Threads building their first clients at the
# moment a trio thread starts would import trio at once, and CPython can then
# hand one of them a half-initialised trio: httpcore decides for the whole
# process that trio is missing, and trio itself may vanish from sys.modules
# ("KeyError: 'trio'"). Importing httpcore with this module settles it in the
# importing thread, before any pool of threads starts.
import httpcore  # noqa: F401
import httpx

from . import _version
from ._auth import AuthStrategy, BearerToken, Credentials, TokenInfo
from ._batch import Batch, BatchOptions, Inputs, Operations
from ._catalogue import DOWNLOAD_ENDPOINT, Endpoint, IdKind, TimeoutClass, get_endpoint, match_path
from ._circuit import Circuit, CircuitPolicy
from ._clock import current_time as _now
from ._coalesce import Coalescer, InFlight
from ._config import (
    USE_DEFAULT,
    Settings,
    SizeLimits,
    Timeouts,
    UseDefault,
    check_tls,
    origin,
    resolve_base_url,
)
from ._convert import misfit_error, structure_lenient
from ._errors import (
    ApiEntrepriseError,
    ApiError,
    AuthenticationError,
    InvalidParameterError,
    MaintenanceWindowError,
    RateLimitError,
    TokenExpiredError,
    TransportError,
    UnexpectedPayloadError,
    _NotAnEnvelope,
    _Oversized,
    error_from_response,
)
from ._gen_resources import Resources
from ._governor import Governor, Limits, Permit, default_governor
from ._identifiers import (
    normalize_identifier,
    shown,
    validate_query_text,
    validate_traceability,
)
from ._maintenance import maintenance_remaining
from ._request import CookielessAsyncClient, RequestBuilder
from ._response import RateLimit, Response, parse_rate_limit
from ._retry import Attempt, RetryPolicy, annotate, describe
from ._telemetry import Stats, StatsCollector, Telemetry
from .audit import AuditError, AuditErrors, AuditRecord, AuditSink, _emit, _entity_of, _field
from .records.api_entreprise import Privileges

__all__ = ["DOCUMENT_CONTENT_TYPES", "AsyncClient", "TokenExpiryWarning"]

logger = logging.getLogger("apientreprise_async")

_EXPIRY_THRESHOLDS = (7, 30, 90)
_warned_expiry: set[tuple[str, int]] = set()
# (operation, JSON path with list indices folded) already logged: once per process each.
_logged_drift: set[tuple[str, str]] = set()
# Ending a body's iteration after an error: a few resumptions within a second (a closed
# network stream fails on the first; an in-memory body ends within its chunks).
_DRAIN_CHUNKS = 16
_DRAIN_SECONDS = 1.0
_INDEX = re.compile(r"\[\d+\]")
_WITHOUT_VALUE = re.compile(r"(, got \w+) .*$")


#: The most of an unexpected document's body kept for the error that refuses it.
_PREVIEW = 64 * 1024


async def _small_body(answer: httpx.Response, kind: str) -> Any:
    """The body of a refused document when it is small and announced (an error page, JSON).

    Parsed JSON, else text for a text type, else bytes; ``None`` when the
    server did not announce a length of at most 64 KiB without compression
    (nothing more is read from a body that may be a large file).
    """
    announced = _announced(answer)
    if announced is None or announced > _PREVIEW:
        return None
    if answer.headers.get("content-encoding", "identity") != "identity":
        return None
    try:
        await answer.aread()
    except httpx.HTTPError:
        return None
    if kind.endswith("json"):
        try:
            return answer.json()
        except ValueError:
            pass
    if kind.startswith("text/") or kind.endswith(("json", "xml")):
        return answer.text
    return answer.content


def _received(
    answer: httpx.Response, raw: Any, rate_limit: Any, op_id: str | None
) -> Response[Any]:
    """What came with a 2xx that is not a JSON object, kept for the error raised about it."""
    return Response(
        data=None,
        links={},
        meta={},
        raw=raw,
        http_status=answer.status_code,
        headers=answer.headers,
        rate_limit=rate_limit,
        request_id=answer.headers.get("x-request-id"),
        operation_id=op_id,
        problems=("the body is not a JSON object @ $",),
    )


def _drift_path(problem: str) -> str:
    """The JSON path a problem line names, list indices folded (``$.data.items[].code``)."""
    return _INDEX.sub("[]", problem.rpartition(" @ ")[2])


#: Content types :meth:`AsyncClient.download` accepts by default.
DOCUMENT_CONTENT_TYPES = frozenset(
    {
        "application/pdf",
        "application/zip",
        "application/x-zip-compressed",
        "application/octet-stream",
    }
)


class TokenExpiryWarning(UserWarning):
    """The token expires within 90, 30 or 7 days."""


class _Trace:
    """What the audit trail needs to know about one call while it runs."""

    __slots__ = (
        "case",
        "context",
        "entity_id",
        "object",
        "operation_id",
        "recipient",
        "sent",
        "span",
        "user",
        "wait",
    )

    def __init__(
        self,
        operation_id: str,
        entity_id: str | None,
        recipient: str | None,
        context: str | None,
        object_: str | None,
        user: str | None,
        case: str | None,
    ) -> None:
        self.operation_id = operation_id
        self.entity_id = entity_id
        self.recipient = recipient
        self.context = context
        self.object = object_
        self.user = user
        self.case = case
        self.wait = 0.0
        self.sent = False
        self.span: Any = None


_TRACEABILITY = ("recipient", "context", "object")
# Headers every request of a client carries alike (the token is named by its fingerprint).
_UNKEYED_HEADERS = frozenset({"authorization", "user-agent"})


_TRACEABILITY_KEYS = tuple(name.encode("ascii") for name in _TRACEABILITY)


def _server_identity(fingerprint: str, request: httpx.Request) -> tuple[str, bytes, bytes, bytes]:
    """What the server compares to detect a duplicate: path and non-traceability parameters.

    The token is named by its ``fingerprint``: the raw token is never part of a key.
    """
    url = request.url
    # On the already encoded target, not through URL.copy_remove_param: that reparses
    # the whole URL once per name, and was the dearest step of an uncontended call.
    path, _, query = url.raw_path.partition(b"?")
    if query:
        query = b"&".join(
            pair for pair in query.split(b"&") if pair.partition(b"=")[0] not in _TRACEABILITY_KEYS
        )
    return fingerprint, url.raw_scheme, url.netloc, path + b"?" + query


@functools.lru_cache(maxsize=256)
def _validated_traceability(
    recipient: str | None, context: str | None, object_: str | None
) -> Mapping[str, str]:
    # Most calls repeat the client's defaults: check each triple once (a SIRET's
    # Luhn sum included). Errors are not cached, so a bad triple fails every time.
    return MappingProxyType(validate_traceability(recipient, context, object_))


def _from_env(name: str) -> str | None:
    """``API_ENTREPRISE_<name>``, or ``None`` when unset or empty."""
    return os.environ.get(f"API_ENTREPRISE_{name}") or None


#: Most values one array query parameter may hold.
_MAX_ARRAY = 100


class _Silence(TransportError):
    """No HTTP answer at all: what the circuit counts."""


class _State(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


def _check_extra_headers(headers: Mapping[str, str], credentials: Credentials) -> None:
    """Refuse caller headers that would replace the credentials or break the request."""
    taken = {name.lower() for name in credentials.names()}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidParameterError("headers", "names and values must be strings")
        if name.lower() in taken:
            raise InvalidParameterError(
                "headers", f"{name} is set by the client's token or auth strategy"
            )
        if not name.isascii() or not value.isascii() or any(c in value for c in "\r\n\x00"):
            raise InvalidParameterError(
                "headers", f"{name}: names and values are ASCII without line breaks"
            )


def _scrubbed(exc: BaseException) -> BaseException:
    """``exc`` with the locals of its finished frames cleared, its traceback lines kept.

    HTTP-layer frames hold the outgoing headers (h11 events, header lists):
    an error reporter capturing the locals of a chained cause would record
    the ``Authorization`` value.
    """
    traceback.clear_frames(exc.__traceback__)
    return exc


def _stop_reading(scope: anyio.CancelScope) -> None:
    """Stop a body being read, from inside httpx's stream generators.

    Leaving ``async for`` by raising would leave those generators suspended,
    finalised later by the garbage collector (trio warns of it); a cancellation
    raised at their next read ends them where they stand, and drops the connection.
    """
    scope.cancel()


def _announced(answer: httpx.Response) -> int | None:
    """The ``Content-Length`` of an answer, when it is a plain number."""
    text = answer.headers.get("content-length", "")
    if 0 < len(text) <= 20 and text.isascii() and text.isdigit():
        return int(text)
    return None


async def _read_within(answer: httpx.Response, max_size: int, url: str, op_id: str | None) -> None:
    """Read ``answer``'s body into it, refusing more than ``max_size`` decoded bytes."""
    announced = _announced(answer)
    if announced is not None and announced > max_size:
        raise _Oversized(
            f"the answer announces {announced:,} bytes; the limit is {max_size:,} (SizeLimits)",
            url=url,
            operation_id=op_id,
        )
    if announced is not None and answer.headers.get("content-encoding", "identity") == "identity":
        # Not compressed, and the HTTP framing (h11, h2) never gives more than the
        # announced length: the body fits, read it the ordinary way (no scope).
        try:
            await answer.aread()
        except httpx.HTTPError as exc:
            raise TransportError(
                f"the answer broke off: {type(exc).__name__} on {answer.request.url.path}",
                url=url,
                operation_id=op_id,
            ) from _scrubbed(exc)
        if len(answer.content) <= max_size:
            return
        raise _Oversized(  # a transport without framing checks (in process) sent more
            f"the answer exceeds the limit of {max_size:,} bytes (SizeLimits)",
            url=url,
            operation_id=op_id,
        )
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.CancelScope() as stop:
            async with _chunks_of(answer) as received:
                async for chunk in received:
                    size += len(chunk)
                    if size > max_size:
                        chunks.clear()
                        _stop_reading(stop)
                        continue
                    chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise TransportError(
            f"the answer broke off: {type(exc).__name__} on {answer.request.url.path}",
            url=url,
            operation_id=op_id,
        ) from _scrubbed(exc)
    if size > max_size:
        raise _Oversized(
            f"the answer exceeds the limit of {max_size:,} bytes (SizeLimits); reading "
            "stopped there",
            url=url,
            operation_id=op_id,
        )
    # What Response.aread() would store: json(), content and text work as usual.
    answer._content = b"".join(chunks)


@contextlib.asynccontextmanager
async def _chunks_of(answer: httpx.Response) -> AsyncIterator[AsyncIterator[bytes]]:
    """The body's chunks; on leaving the block, the stream is closed and its iteration ended.

    httpx and httpcore iterate a body through a chain of async generators. An
    exception raised in the caller's loop (a full disk, a deadline reached
    during a write) leaves the chain suspended until the garbage collector
    finds it, which may be after the event loop ended; trio then warns, and
    a test suite run with warnings as errors fails somewhere else. Resumed
    once the stream is closed, every generator of the chain ends here: on the
    closed stream's error, or at once when the body was read to its end.
    """
    chunks = answer.aiter_bytes()
    try:
        yield chunks
    except BaseException:
        # Read to its end, the chain has ended already: this only runs on an error.
        with anyio.move_on_after(_DRAIN_SECONDS, shield=True):
            await answer.aclose()
            for _ in range(_DRAIN_CHUNKS):  # an in-memory body ends within a few chunks
                try:
                    await chunks.__anext__()
                except (Exception, anyio.get_cancelled_exc_class()):
                    break  # the end, the closed stream's error, or this drain's deadline
        raise


def _check_transport_tls(
    transport: httpx.AsyncBaseTransport | None, http_client: httpx.AsyncClient | None
) -> None:
    """Refuse a caller's transport or client built with certificate checks off.

    httpx keeps the TLS context in its connection pool; transports that are
    not httpx's network transport (respx, ASGI, an emulator) have no TLS at all.
    """
    transports: list[Any] = [transport]
    if http_client is not None:
        transports.append(getattr(http_client, "_transport", None))
        transports.extend(getattr(http_client, "_mounts", {}).values())
    for candidate in transports:
        if not isinstance(candidate, httpx.AsyncHTTPTransport):
            continue
        pool = getattr(candidate, "_pool", None)
        for name in ("_ssl_context", "_proxy_ssl_context"):
            context = getattr(pool, name, None)
            if context is not None:
                try:
                    check_tls(context)
                except InvalidParameterError:
                    raise InvalidParameterError(
                        "verify" if http_client is None else "http_client",
                        "TLS verification cannot be disabled: the given "
                        f"{'http_client' if http_client is not None else 'transport'} does not "
                        "check certificates (verify=False or a context without CERT_REQUIRED and "
                        "check_hostname); build it with the default verify=True",
                    ) from None


def _path_problem(path: object) -> InvalidParameterError | None:
    """Why ``get()`` may not send ``path`` (a query, a dot segment...); ``None`` if it may."""
    if not isinstance(path, str):
        return InvalidParameterError("path", f"{shown(path)}: expected a string")
    if len(path) > 2048 or not path.isascii() or not path.isprintable() or " " in path:
        return InvalidParameterError(
            "path", f"{shown(path)}: expected printable ASCII without spaces, at most 2048"
        )
    if "?" in path or "#" in path or "\\" in path:
        return InvalidParameterError(
            "path", f"{shown(path)}: give query parameters in params=, not in the path"
        )
    if any(segment in (".", "..") for segment in path.split("/")):
        return InvalidParameterError("path", f"{shown(path)}: dot segments are refused")
    return None


def _document_url(document_url: object) -> httpx.URL:
    """The URL to download, refused locally unless it is a plain http(s) URL."""
    if not isinstance(document_url, str | httpx.URL):
        raise InvalidParameterError(
            "document_url", f"must be a string, not {type(document_url).__name__}"
        )
    text = str(document_url)
    shown = text if len(text) <= 200 else text[:200] + "..."
    if any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise InvalidParameterError("document_url", f"{shown!r} holds control characters")
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL:
        raise InvalidParameterError("document_url", f"{shown!r} is not a URL") from None
    if url.scheme not in {"http", "https"} or not url.host:
        raise InvalidParameterError("document_url", f"{shown!r} is not an http(s) URL")
    if url.userinfo:
        raise InvalidParameterError("document_url", "a URL with credentials in it is refused")
    return url


def _user_agent() -> str:
    # Exactly the DINUM spec's §10 format: the operator recognises official clients by it.
    return f"api-entreprise-python/{_version.version()} (+https://github.com/datagouv/apistration)"


class AsyncClient(Resources):
    """Asynchronous client for API Entreprise.

    Use it as an async context manager; one instance is safe to share between
    tasks. Every call is checked locally, admitted by the governor, sent,
    then either returned as a :class:`Response` or raised as an
    :class:`ApiEntrepriseError` subclass.

    Args:
        token: the API Entreprise JWT (else ``API_ENTREPRISE_TOKEN``).
        auth: an :class:`AuthStrategy` instead of ``token``.
        recipient, context, object: traceability defaults, overridable per call
            (else ``API_ENTREPRISE_RECIPIENT``, ``_CONTEXT`` and ``_OBJECT``).
        environment: ``"production"`` (default) or ``"staging"`` (else ``API_ENTREPRISE_ENV``).
        base_url: any base URL (else ``API_ENTREPRISE_BASE_URL``, else the environment's).
        timeouts: per-call-class timeouts, and the deadline of one attempt.
        sizes: the largest answer accepted per class of call (:class:`SizeLimits`).
        limits: rate limits for a governor private to this client.
        governor: a :class:`Governor` to share; defaults to the process-wide one.
        max_wait: admission deadline in seconds (``None`` waits as long as needed).
        transport: an httpx async transport (respx, ``httpx.ASGITransport``...).
        http_client: a caller-owned ``httpx.AsyncClient``; never closed by this client.
        verify: a CA bundle path or an ``ssl.SSLContext``; ``False``, a context that
            does not check certificates, or such a ``transport``/``http_client``, is refused.
        check_maintenance: refuse calls locally during maintenance windows.
        retry_rate_limited: after a 429, wait for the governor's pause and go again.
        retry: a :class:`RetryPolicy` for transient failures (off by default).
        circuit: when to stop sending after repeated silence (``None`` disables it).
        coalesce: share one request between concurrent identical calls.
        audit: a sink receiving one :class:`AuditRecord` per attempt or local refusal.
        audit_errors: ``"raise"`` (default: an unaudited access fails) or ``"log"``.
        user, case: references written in audit records (who asked, for which file).
        strict: raise :class:`UnexpectedPayloadError` when a 2xx JSON answer does
            not fit its record, instead of returning it with ``problems``.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        auth: AuthStrategy | None = None,
        recipient: str | None = None,
        context: str | None = None,
        object: str | None = None,
        environment: str | None = None,
        base_url: str | None = None,
        timeouts: Timeouts | None = None,
        sizes: SizeLimits | None = None,
        limits: Limits | None = None,
        governor: Governor | None = None,
        max_wait: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        verify: Any = True,
        user_agent: str | None = None,
        check_maintenance: bool = True,
        retry_rate_limited: bool = False,
        retry: RetryPolicy | None = None,
        circuit: CircuitPolicy | None = CircuitPolicy(),  # noqa: B008  (frozen value)
        coalesce: bool = True,
        audit: AuditSink | None = None,
        audit_errors: AuditErrors = "raise",
        user: str | None = None,
        case: str | None = None,
        strict: bool = False,
    ) -> None:
        if auth is None:
            raw = token if token is not None else os.environ.get("API_ENTREPRISE_TOKEN")
            if not raw:
                raise InvalidParameterError(
                    "token", "no token given and API_ENTREPRISE_TOKEN is not set"
                )
            auth = BearerToken(raw)
        elif token is not None:
            raise ValueError("pass either token or auth, not both")
        if limits is not None and governor is not None:
            raise ValueError("pass either limits or governor, not both")
        if transport is not None and http_client is not None:
            raise ValueError("pass either transport or http_client, not both")
        check_tls(verify)
        _check_transport_tls(transport, http_client)
        url, env_name = resolve_base_url(base_url, environment)
        # Like the command line and the FastAPI lifespan: the same variables
        # mean the same thing in every entry point.
        settings = Settings(
            base_url=url,
            environment=env_name,
            recipient=recipient if recipient is not None else _from_env("RECIPIENT"),
            context=context if context is not None else _from_env("CONTEXT"),
            object=object if object is not None else _from_env("OBJECT"),
            timeouts=timeouts or Timeouts(),
            max_wait=max_wait,
            user_agent=user_agent or _user_agent(),
            verify=verify,
            check_maintenance=check_maintenance,
            retry_rate_limited=retry_rate_limited,
            retry=retry,
            coalesce=coalesce,
            user=user,
            case=case,
            strict=strict,
            sizes=sizes or SizeLimits(),
        )
        if governor is None:
            governor = Governor(limits) if limits is not None else default_governor()
        owns_http = http_client is None
        if http_client is None:
            http_client = CookielessAsyncClient(
                transport=transport,
                verify=verify,
                timeout=httpx.Timeout(settings.timeouts.json, connect=settings.timeouts.connect),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
                follow_redirects=False,
            )
        self._circuit = Circuit(circuit) if circuit is not None else None
        self._coalescer: Coalescer[Response[Any]] = Coalescer()
        self._in_flight = InFlight()
        if audit_errors not in ("raise", "log"):
            raise ValueError("audit_errors must be 'raise' or 'log'")
        self._audit = audit
        self._audit_errors: AuditErrors = audit_errors
        self._stats = StatsCollector()
        self._telemetry = Telemetry()
        self._builder = RequestBuilder(http_client, settings.base_url, plain=owns_http)
        self._setup(settings, auth, governor, http_client, owns_http)
        self._warn_expiry()

    def _setup(
        self,
        settings: Settings,
        auth: AuthStrategy,
        governor: Governor,
        http: httpx.AsyncClient,
        owns_http: bool,
    ) -> None:
        self._settings = settings
        self._timeouts: dict[float, httpx.Timeout] = {}
        self._auth = auth
        self._governor = governor
        self._http = http
        self._owns_http = owns_http
        self._state = _State.UNOPENED
        self._init_resources()

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is _State.CLOSED:
            raise RuntimeError("this AsyncClient is closed; create a new one")
        self._state = _State.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (unless it belongs to the caller or a parent client)."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._owns_http:
            with anyio.CancelScope(shield=True):
                await self._http.aclose()

    def with_options(
        self,
        *,
        token: str | UseDefault = USE_DEFAULT,
        auth: AuthStrategy | UseDefault = USE_DEFAULT,
        environment: str | UseDefault = USE_DEFAULT,
        base_url: str | UseDefault = USE_DEFAULT,
        user_agent: str | UseDefault = USE_DEFAULT,
        recipient: str | UseDefault | None = USE_DEFAULT,
        context: str | UseDefault | None = USE_DEFAULT,
        object: str | UseDefault | None = USE_DEFAULT,
        timeouts: Timeouts | UseDefault = USE_DEFAULT,
        max_wait: float | UseDefault | None = USE_DEFAULT,
        check_maintenance: bool | UseDefault = USE_DEFAULT,
        retry_rate_limited: bool | UseDefault = USE_DEFAULT,
        retry: RetryPolicy | UseDefault | None = USE_DEFAULT,
        coalesce: bool | UseDefault = USE_DEFAULT,
        user: str | UseDefault | None = USE_DEFAULT,
        case: str | UseDefault | None = USE_DEFAULT,
        strict: bool | UseDefault = USE_DEFAULT,
    ) -> AsyncClient:
        """A new client with some settings changed, sharing this one's pool and governor.

        This is the DINUM spec's ``with()``: the original is left unchanged. A new
        ``environment`` alone moves to that environment's URL; ``base_url`` keeps
        the environment's name unless one is given too. A new ``token`` (or
        ``auth``) gets buckets of its own in the shared governor. The new client
        never closes the shared pool; close the original when done.

        Raises:
            ValueError: both ``token`` and ``auth``, an unknown environment or a
                base URL that is not HTTP(S).
        """
        changes: dict[str, Any] = {
            name: value
            for name, value in (
                ("recipient", recipient),
                ("context", context),
                ("object", object),
                ("timeouts", timeouts),
                ("max_wait", max_wait),
                ("check_maintenance", check_maintenance),
                ("retry_rate_limited", retry_rate_limited),
                ("retry", retry),
                ("coalesce", coalesce),
                ("user", user),
                ("case", case),
                ("strict", strict),
                ("user_agent", user_agent),
            )
            if value is not USE_DEFAULT
        }
        strategy = self._auth
        if not isinstance(token, UseDefault):
            if not isinstance(auth, UseDefault):
                raise ValueError("pass either token or auth, not both")
            strategy = BearerToken(token)
        elif not isinstance(auth, UseDefault):
            strategy = auth
        circuit = self._circuit
        if not (isinstance(environment, UseDefault) and isinstance(base_url, UseDefault)):
            # Only what is passed here counts: the environment variables were read once.
            url, name = resolve_base_url(
                None if isinstance(base_url, UseDefault) else base_url,
                self._settings.environment if isinstance(environment, UseDefault) else environment,
                env={},
            )
            changes.update(base_url=url, environment=name)
            if url != self._settings.base_url and circuit is not None:
                # Silence from one server says nothing about another.
                circuit = Circuit(circuit.policy)
        clone = AsyncClient.__new__(AsyncClient)
        clone._circuit = circuit
        clone._coalescer = self._coalescer
        clone._in_flight = self._in_flight
        clone._audit = self._audit
        clone._audit_errors = self._audit_errors
        clone._stats = self._stats
        clone._telemetry = self._telemetry
        settings = attrs.evolve(self._settings, **changes)
        clone._builder = self._builder.rebased(settings.base_url)
        clone._setup(
            settings,
            strategy,
            self._governor,
            self._http,
            owns_http=False,
        )
        if strategy is not self._auth:
            clone._warn_expiry()
        return clone

    # -- introspection ---------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The immutable configuration of this client."""
        return self._settings

    @property
    def governor(self) -> Governor:
        """The governor admitting this client's calls."""
        return self._governor

    def stats(self) -> Stats:
        """Counters of this client and its ``with_options`` copies, with the governor's view."""
        return self._stats.snapshot(self._governor.snapshot())

    @property
    def token_fingerprint(self) -> str:
        """A keyed hash naming the token in logs and rate buckets (never the token)."""
        return self._auth.fingerprint

    @property
    def token_info(self) -> TokenInfo | None:
        """Expiry, subject and scopes read from the token (``None`` if not a JWT)."""
        return self._auth.token_info

    def __repr__(self) -> str:
        s = self._settings
        return (
            f"<AsyncClient base_url={s.base_url!r} environment={s.environment!r} "
            f"token={self._auth.fingerprint[:8]}... state={self._state.name.lower()}>"
        )

    def _warn_expiry(self) -> None:
        info = self._auth.token_info
        left = info.expires_in() if info else None
        if left is None or left.total_seconds() <= 0:
            return
        days = left.total_seconds() / 86400
        for threshold in _EXPIRY_THRESHOLDS:
            if days <= threshold:
                key = (self._auth.fingerprint, threshold)
                if key not in _warned_expiry:
                    _warned_expiry.add(key)
                    message = (
                        f"the API Entreprise token {self._auth.fingerprint[:8]}... expires in "
                        f"{days:.0f} days; renew it from the dashboard"
                    )
                    logger.warning(message, extra={"token_days_left": round(days, 1)})
                    warnings.warn(message, TokenExpiryWarning, stacklevel=3)
                return

    # -- calls -------------------------------------------------------------------------

    async def call(
        self,
        operation_id: str,
        /,
        *,
        recipient: str | None = None,
        context: str | None = None,
        object: str | None = None,
        fresh: bool = False,
        timeout: float | None = None,
        max_wait: float | UseDefault | None = USE_DEFAULT,
        retry: RetryPolicy | UseDefault | None = USE_DEFAULT,
        coalesce: bool | None = None,
        user: str | None = None,
        case: str | None = None,
        strict: bool | None = None,
        **params: Any,
    ) -> Response[Any]:
        """Call an operation of the catalogue by its ``x-operationId``.

        Path and query parameters are keywords (``siren="418166096"``).
        ``retry`` overrides the client's retry policy (``None``: no retry),
        ``coalesce=False`` opts out of request sharing, ``user`` and ``case``
        go into the audit trail, ``strict`` overrides the client's setting.

        Raises:
            UnknownOperationError: no such operation.
            InvalidParameterError: a parameter is missing or malformed (nothing sent).
            UnexpectedPayloadError: with ``strict``, the answer does not fit its
                record (``.response`` holds it).
        """
        endpoint = get_endpoint(operation_id)
        path_values: dict[str, Any] = {}
        refused: InvalidParameterError | None = None
        for param in endpoint.path_params:
            if param.name not in params:
                refused = refused or InvalidParameterError(
                    param.name, "is required by " + operation_id
                )
            path_values[param.name] = params.pop(param.name, None)
        unknown = params.keys() - endpoint.query_by_name.keys()
        if unknown:
            refused = refused or InvalidParameterError(
                sorted(unknown)[0], f"is not a parameter of {operation_id}"
            )
        return await self._request(
            endpoint,
            path_values,
            params,
            recipient=recipient,
            context=context,
            object_=object,
            fresh=fresh,
            timeout=timeout,
            max_wait=max_wait,
            retry=retry,
            coalesce=coalesce,
            user=user,
            case=case,
            strict=strict,
            refused=refused,
        )

    async def get(
        self,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        max_wait: float | UseDefault | None = USE_DEFAULT,
        retry: RetryPolicy | UseDefault | None = USE_DEFAULT,
        coalesce: bool | None = None,
        user: str | None = None,
        case: str | None = None,
    ) -> Response[Any]:
        """Low-level GET of any path, through the same pipeline as typed methods.

        Traceability parameters in ``params`` override the client defaults. A
        path of the catalogue is validated and governed as its operation; any
        other path is governed in the JSON group. ``data`` stays the parsed JSON
        (use :meth:`call` or a typed method for a record).
        """
        query = dict(params or {})
        recipient = query.pop("recipient", None)
        context = query.pop("context", None)
        object_ = query.pop("object", None)
        refused = _path_problem(path)
        path = "/" + path.lstrip("/") if refused is None else "/"
        found = match_path(path)
        if found is None or refused is not None:
            endpoint = Endpoint(operation_id="", path=path, provider="", version=0)
            path_values: dict[str, Any] = {}
        else:
            endpoint, path_values = found
            endpoint = attrs.evolve(endpoint, record=None)
        return await self._request(
            endpoint,
            path_values,
            query,
            recipient=recipient,
            context=context,
            object_=object_,
            extra_headers=headers,
            timeout=timeout,
            max_wait=max_wait,
            retry=retry,
            coalesce=coalesce,
            user=user,
            case=case,
            refused=refused,
        )

    async def privileges(
        self,
        *,
        timeout: float | None = None,
        max_wait: float | UseDefault | None = USE_DEFAULT,
    ) -> Response[Privileges]:
        """The privileges the server grants this token.

        Scopes act as data masks on the server, so the client never refuses a
        call because of them; :attr:`token_info` shows the scopes of the JWT
        without a request.

        .. versionadded:: 0.1.0
        """
        endpoint = get_endpoint("api_entreprise_privileges")
        return await self._request(endpoint, {}, {}, timeout=timeout, max_wait=max_wait)

    async def download(
        self,
        document_url: str,
        destination: str | os.PathLike[str],
        *,
        content_types: Collection[str] | None = DOCUMENT_CONTENT_TYPES,
        timeout: float | None = None,
        max_wait: float | UseDefault | None = USE_DEFAULT,
        max_size: int | None = None,
    ) -> pathlib.Path:
        """Stream a document (a ``document_url`` of an answer) to a file.

        The download goes through the governor's document bucket and uses the
        download timeout. Bytes go to a temporary file beside the destination,
        renamed over it only once complete: the destination is never partial.
        The token goes along only when the URL has the API's own origin
        (scheme, host and port: https, or the loopback base URL of an emulator).

        Args:
            document_url: the URL the API returned.
            destination: a file path, or an existing directory (the file is then
                named after the URL's last segment).
            content_types: accepted ``Content-Type`` values; ``None`` accepts any.
            timeout: read timeout in seconds (default: the client's download timeout).
            max_wait: how long the governor may hold the download back.
            max_size: the largest file accepted, in bytes (default:
                ``SizeLimits.download``).

        Returns:
            The path written.

        Raises:
            InvalidParameterError: not an http(s) URL (nothing sent).
            UnexpectedPayloadError: the server sent another content type (nothing written).
            ApiError: the server answered with an error status.
            TransportError: no answer, the transfer broke, went past the deadline of
                an attempt or past ``max_size`` (nothing written).

        .. versionadded:: 0.1.0
        """
        if self._state is _State.CLOSED:
            raise RuntimeError("this AsyncClient is closed")
        settings = self._settings
        # Downloads are accesses too: audited like calls, refusals included.
        trace = _Trace(
            DOWNLOAD_ENDPOINT.operation_id,
            None,
            settings.recipient,
            settings.context,
            settings.object,
            settings.user,
            settings.case,
        )
        try:
            url = _document_url(document_url)
            trace.entity_id = _field(url.path)  # never the query: it may hold a signature
            limit = settings.sizes.download if max_size is None else max_size
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise InvalidParameterError(
                    "max_size", f"a positive number of bytes, not {shown(limit)}"
                )
            credentials = (
                self._credentials(DOWNLOAD_ENDPOINT)
                if origin(str(url)) == origin(settings.base_url)
                else None
            )
        except ApiEntrepriseError as exc:
            self._audit_refusal(trace, exc, 1)
            raise
        started = anyio.current_time()
        try:
            target, status = await self._download(
                url, destination, credentials, content_types, timeout, max_wait, limit, trace
            )
        except ApiEntrepriseError as exc:
            if trace.sent:
                self._audit_attempt(trace, 1, started, exc)
            else:
                self._audit_refusal(trace, exc, 1)
            raise
        except anyio.get_cancelled_exc_class():
            if trace.sent:
                self._audit_cancelled(trace, 1, started)
            raise
        self._keep(
            AuditRecord(
                timestamp=dt.datetime.now(dt.UTC),
                operation_id=trace.operation_id,
                entity_id=trace.entity_id,
                context=_field(trace.context),
                recipient=_field(trace.recipient),
                object=_field(trace.object),
                outcome="ok",
                http_status=status,
                duration=max(0.0, anyio.current_time() - started),
                governor_wait=trace.wait,
                user=_field(trace.user),
                case=_field(trace.case),
            ),
            trace,
        )
        return target

    async def _download(
        self,
        url: httpx.URL,
        destination: str | os.PathLike[str],
        credentials: Credentials | None,
        content_types: Collection[str] | None,
        timeout: float | None,
        max_wait: float | UseDefault | None,
        limit: int,
        trace: _Trace,
    ) -> tuple[pathlib.Path, int]:
        """Fetch and write one document; the path written and the HTTP status."""
        settings = self._settings
        target = pathlib.Path(destination)
        if await anyio.Path(target).is_dir():
            target = target / (url.path.rsplit("/", 1)[-1] or "document")
        headers = {"User-Agent": settings.user_agent}
        read = timeout if timeout is not None else settings.timeouts.read_for(TimeoutClass.DOWNLOAD)
        wait = settings.max_wait if max_wait is USE_DEFAULT else max_wait
        request = self._http.build_request(
            "GET",
            url,
            headers=headers,
            timeout=httpx.Timeout(read, connect=settings.timeouts.connect),
        )
        # Document URLs usually point at a storage host: the token only goes to the
        # API's own origin (base_url is https, or a loopback emulator: see resolve_base_url).
        if credentials is not None:
            credentials.apply(request.headers)
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        deadline = settings.timeouts.total_for(read)
        asked = anyio.current_time()
        async with self._governor.permit(
            self._auth.fingerprint, DOWNLOAD_ENDPOINT, max_wait=wait
        ) as permit:
            trace.wait = anyio.current_time() - asked
            permit.sending()
            trace.sent = True
            with anyio.move_on_after(deadline) as scope:
                try:
                    # httpx drops Authorization on a redirect to another origin.
                    answer = await self._http.send(request, stream=True, follow_redirects=True)
                except httpx.HTTPError as exc:
                    raise TransportError(
                        f"no answer: {type(exc).__name__} downloading {url.path}", url=str(url)
                    ) from _scrubbed(exc)
                try:
                    permit.observe(answer.status_code, answer.headers)
                    await self._check_download(answer, str(url), content_types)
                    await self._stream_to(answer, partial, target, str(url), limit)
                finally:
                    with anyio.CancelScope(shield=True):
                        await answer.aclose()
            if scope.cancelled_caught:
                with anyio.CancelScope(shield=True):
                    await anyio.Path(partial).unlink(missing_ok=True)
                raise TransportError(
                    f"downloading {url.path} took longer than the {deadline:.1f} s deadline "
                    "of an attempt (Timeouts.total); nothing written",
                    url=str(url),
                )
        return target, answer.status_code

    async def _check_download(
        self, answer: httpx.Response, url: str, content_types: Collection[str] | None
    ) -> None:
        if not answer.is_success:
            await answer.aread()
            try:
                body = answer.json()
            except ValueError:
                body = None
            raise error_from_response(
                answer.status_code,
                body,
                method="GET",
                url=url,
                headers=answer.headers,
                operation_id=DOWNLOAD_ENDPOINT.operation_id,
                rate_limit=parse_rate_limit(answer.headers),
                request_id=answer.headers.get("x-request-id"),
                now=time.time(),
            )
        kind = answer.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_types is not None and kind not in content_types:
            problem = f"Content-Type: {kind or '(absent)'}"
            raise UnexpectedPayloadError(
                f"the document is {kind or 'untyped'}, not one of {sorted(content_types)}",
                problems=(problem,),
                operation_id=DOWNLOAD_ENDPOINT.operation_id,
                url=url,
                response=Response(
                    data=None,
                    links={},
                    meta={},
                    raw=await _small_body(answer, kind),
                    http_status=answer.status_code,
                    headers=answer.headers,
                    rate_limit=parse_rate_limit(answer.headers),
                    request_id=answer.headers.get("x-request-id"),
                    operation_id=DOWNLOAD_ENDPOINT.operation_id,
                    problems=(problem,),
                ),
            )

    async def _stream_to(
        self,
        answer: httpx.Response,
        partial: pathlib.Path,
        target: pathlib.Path,
        url: str,
        max_size: int,
    ) -> None:
        announced = _announced(answer)
        if announced is not None and announced > max_size:
            raise _Oversized(
                f"the document announces {announced:,} bytes; the limit is "
                f"{max_size:,} (max_size, SizeLimits.download); nothing written",
                url=url,
            )
        written = 0
        try:
            async with await anyio.open_file(partial, "wb") as out:
                with anyio.CancelScope() as stop:
                    async with _chunks_of(answer) as received:
                        async for chunk in received:
                            written += len(chunk)
                            if written > max_size:
                                _stop_reading(stop)
                                continue
                            await out.write(chunk)
            if written > max_size:
                raise _Oversized(
                    f"the document exceeds the limit of {max_size:,} bytes "
                    "(max_size, SizeLimits.download); nothing written",
                    url=url,
                )
            await anyio.Path(partial).replace(target)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await anyio.Path(partial).unlink(missing_ok=True)
            if isinstance(exc, httpx.HTTPError):
                raise TransportError(
                    f"the transfer broke: {type(exc).__name__} downloading {answer.url.path}",
                    url=url,
                ) from exc
            raise

    def _timeout(self, read: float) -> httpx.Timeout:
        """The request timeout for a read timeout, made once per value (settings are frozen)."""
        timeout = self._timeouts.get(read)
        if timeout is None:
            timeout = httpx.Timeout(read, connect=self._settings.timeouts.connect)
            if len(self._timeouts) < 64:  # per-call timeouts are free-form: keep the cache small
                self._timeouts[read] = timeout
        return timeout

    def _prepare(
        self,
        endpoint: Endpoint,
        path_values: Mapping[str, Any],
        query: Mapping[str, Any],
        trace: _Trace,
    ) -> tuple[str, dict[str, Any]]:
        """Validate everything locally; return the path and the query to send.

        The traceability parameters are the trace's: per-call values already
        merged with the client's defaults.
        """
        params: dict[str, Any] = {}
        if endpoint.traceability:
            triple = (trace.recipient, trace.context, trace.object)
            if all(value is None or type(value) is str for value in triple):
                params.update(_validated_traceability(*triple))
            else:  # odd types (a list, a huge int): checked, never cached
                params.update(validate_traceability(*triple))
        values = {
            p.name: normalize_identifier(p.kind, path_values.get(p.name), p.name)
            for p in endpoint.path_params
        }
        by_name = endpoint.query_by_name
        for name, value in query.items():
            if value is None:
                continue
            spec = by_name.get(name)
            if spec is not None and spec.kind is not IdKind.TEXT:
                params[name] = normalize_identifier(spec.kind, value, name)
                continue
            # Free values too: visible ASCII strings or ints, never an object whose
            # str() would be sent as is. A list is an array parameter (DINUM §9.4).
            if isinstance(value, list | tuple):
                if spec is not None:  # the catalogue has no array parameter
                    raise InvalidParameterError(name, "takes one value, not a list")
                if not 0 < len(value) <= _MAX_ARRAY:
                    raise InvalidParameterError(
                        name, f"an array of 1 to {_MAX_ARRAY} values, not {len(value)}"
                    )
                params[name] = [validate_query_text(item, name) for item in value]
                continue
            text = validate_query_text(value, name)
            if spec is not None and spec.choices and text not in spec.choices:
                raise InvalidParameterError(
                    name, f"{shown(value)} is not one of {list(spec.choices)}"
                )
            params[name] = text
        for spec in endpoint.query_params:
            if spec.required and spec.name not in params:
                raise InvalidParameterError(spec.name, "is required")
        path = endpoint.render_path(values) if endpoint.path_params else endpoint.path
        return path, params

    async def _request(
        self,
        endpoint: Endpoint,
        path_values: Mapping[str, Any],
        query: Mapping[str, Any],
        *,
        recipient: str | None = None,
        context: str | None = None,
        object_: str | None = None,
        fresh: bool = False,
        extra_headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        max_wait: float | UseDefault | None = USE_DEFAULT,
        retry: RetryPolicy | UseDefault | None = USE_DEFAULT,
        coalesce: bool | None = None,
        user: str | None = None,
        case: str | None = None,
        strict: bool | None = None,
        refused: InvalidParameterError | None = None,
    ) -> Response[Any]:
        if self._state is _State.CLOSED:
            raise RuntimeError("this AsyncClient is closed")
        if endpoint.deprecated:
            successor = (
                f"; use {endpoint.successor} instead"
                if endpoint.successor
                else " (no successor announced)"
            )
            # stacklevel 3: the caller of call(), get() or a typed method.
            warnings.warn(
                f"{endpoint.operation_id} is deprecated by API Entreprise{successor}",
                DeprecationWarning,
                stacklevel=3,
            )
        s = self._settings
        trace = _Trace(
            endpoint.operation_id,
            _entity_of(path_values),
            recipient if recipient is not None else s.recipient,
            context if context is not None else s.context,
            object_ if object_ is not None else s.object,
            user if user is not None else s.user,
            case if case is not None else s.case,
        )
        try:
            if refused is not None:
                raise refused
            path, params = self._prepare(endpoint, path_values, query, trace)
            credentials = self._credentials(endpoint)
            if extra_headers:
                _check_extra_headers(extra_headers, credentials)
            self._check_maintenance(endpoint)
        except ApiEntrepriseError as exc:
            self._audit_refusal(trace, exc, 1)
            raise
        # The credentials go on the request itself: this dict (kept by the
        # coalescing key) and every frame above the transport never hold them.
        headers: dict[str, str] = dict(extra_headers) if extra_headers else {}
        if fresh:
            headers["Cache-Control"] = "no-cache"
        headers["User-Agent"] = s.user_agent
        read = timeout if timeout is not None else s.timeouts.read_for(endpoint.timeout_class)
        wait = s.max_wait if max_wait is USE_DEFAULT else max_wait
        request = self._builder.build(path, params, headers, self._timeout(read))
        credentials.apply(request.headers)
        policy = s.retry if retry is USE_DEFAULT else retry

        span = self._telemetry.span(endpoint.operation_id)
        if span is None:
            response = await self._run(endpoint, request, headers, wait, policy, coalesce, trace)
        else:
            with span as live:
                trace.span = live
                response = await self._run(
                    endpoint, request, headers, wait, policy, coalesce, trace
                )
        # Strictness is the caller's, checked after the (possibly shared) answer arrived.
        if response.problems and (s.strict if strict is None else strict):
            raise misfit_error(
                endpoint.record,
                response.problems,
                operation_id=endpoint.operation_id or None,
                url=str(request.url),
                response=response,
            )
        return response

    async def _run(
        self,
        endpoint: Endpoint,
        request: httpx.Request,
        headers: Mapping[str, str],
        wait: float | None,
        policy: RetryPolicy | None,
        coalesce: bool | None,
        trace: _Trace,
    ) -> Response[Any]:
        led = False
        url = str(request.url)  # once: httpx builds the string anew at each str()

        async def attempts() -> Response[Any]:
            nonlocal led
            led = True
            return await self._attempts(endpoint, request, url, wait, policy, trace)

        if not (self._settings.coalesce if coalesce is None else coalesce):
            return await attempts()
        # Identical URL (path, parameters, traceability), token and headers: the cache
        # directive or any header a caller added changes what the answer may be.
        extra = tuple(
            sorted(
                (name.lower(), value)
                for name, value in headers.items()
                if name.lower() not in _UNKEYED_HEADERS
            )
        )
        key = (self._auth.fingerprint, url, extra)
        started = _now()
        try:
            response, _shared = await self._coalescer.run(key, attempts)
        except ApiEntrepriseError as exc:
            if not led:
                self._audit_attempt(trace, 1, started, exc, coalesced=True)
            raise
        if not led:
            self._audit_attempt(trace, 1, started, response, coalesced=True)
        return response

    def _audit_refusal(self, trace: _Trace, error: BaseException, attempt: int) -> None:
        record = AuditRecord(
            timestamp=dt.datetime.now(dt.UTC),
            operation_id=trace.operation_id,
            entity_id=trace.entity_id,
            context=_field(trace.context),
            recipient=_field(trace.recipient),
            object=_field(trace.object),
            outcome="refused",
            error_codes=(type(error).__name__,),
            attempt=attempt,
            user=_field(trace.user),
            case=_field(trace.case),
        )
        self._keep(record, trace)

    def _audit_attempt(
        self,
        trace: _Trace,
        attempt: int,
        started: float,
        outcome: Response[Any] | ApiEntrepriseError,
        *,
        coalesced: bool = False,
    ) -> None:
        unfit: tuple[str, ...] = ()
        if isinstance(outcome, Response):
            status: int | None = outcome.http_status
            label = "ok"
            codes: tuple[str, ...] = ()
            request_id = outcome.request_id
            if outcome.problems:
                unfit = tuple(sorted({_drift_path(line) for line in outcome.problems}))
        else:
            status = getattr(outcome, "http_status", None)
            label = f"http_{status}" if status is not None else type(outcome).__name__
            codes = tuple(getattr(outcome, "codes", ())) or (type(outcome).__name__,)
            request_id = getattr(outcome, "request_id", None)
        record = AuditRecord(
            timestamp=dt.datetime.now(dt.UTC),
            operation_id=trace.operation_id,
            entity_id=trace.entity_id,
            context=trace.context,
            recipient=trace.recipient,
            object=trace.object,
            outcome=label,
            http_status=status,
            error_codes=codes,
            duration=max(0.0, _now() - started),
            governor_wait=0.0 if coalesced else trace.wait,
            attempt=attempt,
            coalesced=coalesced,
            user=trace.user,
            case=trace.case,
            request_id=request_id,
            unfit_paths=unfit,
        )
        self._keep(record, trace)

    def _audit_cancelled(self, trace: _Trace, attempt: int, started: float) -> None:
        record = AuditRecord(
            timestamp=dt.datetime.now(dt.UTC),
            operation_id=trace.operation_id,
            entity_id=trace.entity_id,
            context=trace.context,
            recipient=trace.recipient,
            object=trace.object,
            outcome="cancelled",
            error_codes=("Cancelled",),
            duration=max(0.0, _now() - started),
            governor_wait=trace.wait,
            attempt=attempt,
            user=trace.user,
            case=trace.case,
        )
        try:
            self._keep(record, trace)
        except AuditError as exc:
            # The cancellation goes on: a failing sink must not turn it into an error.
            logger.error("%s", exc, extra={"audit_failure": True})

    def _keep(self, record: AuditRecord, trace: _Trace) -> None:
        self._stats.add(record)
        self._telemetry.record(record, trace.span)
        _emit(self._audit, record, self._audit_errors, logger)

    async def _attempts(
        self,
        endpoint: Endpoint,
        request: httpx.Request,
        url: str,
        max_wait: float | None,
        policy: RetryPolicy | None,
        trace: _Trace,
    ) -> Response[Any]:
        """Send once, or as the retry policy allows, each attempt through the governor."""
        history: list[Attempt] = []
        began = _now()
        deadline = None if policy is None or policy.deadline is None else began + policy.deadline
        number = 0
        while True:
            number += 1
            wait = max_wait
            if number > 1:
                began = _now()
            trace.wait = 0.0
            try:
                if deadline is None:
                    response = await self._send(endpoint, request, url, wait, trace)
                else:
                    left = deadline - began
                    wait = left if wait is None else min(wait, left)
                    with anyio.fail_after(max(0.0, left)):
                        response = await self._send(endpoint, request, url, wait, trace)
                self._audit_attempt(trace, number, began, response)
                return response
            except TimeoutError:
                error: ApiEntrepriseError = TransportError(
                    f"call deadline of {policy.deadline if policy else 0:.1f} s exceeded",
                    url=url,
                    operation_id=endpoint.operation_id or None,
                )
            except ApiEntrepriseError as exc:
                error = exc
            except anyio.get_cancelled_exc_class():
                if trace.sent:
                    # The server saw the request: the access happened, audit it.
                    self._audit_cancelled(trace, number, began)
                raise
            if trace.sent:
                self._audit_attempt(trace, number, began, error)
            else:
                self._audit_refusal(trace, error, number)
            if policy is None:
                if (
                    isinstance(error, RateLimitError)
                    and not error.local
                    and self._settings.retry_rate_limited
                ):
                    continue
                raise error
            pause = 0.0
            give_up = number >= policy.max_attempts or not policy.retryable(error)
            if not give_up:
                pause = policy.delay(number, error)
                if deadline is not None and _now() + pause >= deadline:
                    give_up = True
                    pause = 0.0
            label = describe(error)
            history.append(Attempt(number, label, pause))
            if give_up:
                annotate(error, history)
                raise error
            logger.info(
                "attempt %d of %s failed (%s); retrying in %.2f s",
                number,
                endpoint.operation_id or request.url.path,
                label,
                pause,
                extra={"attempt": number, "retry_in": pause, "error": label},
            )
            await anyio.sleep(pause)

    def _credentials(self, endpoint: Endpoint) -> Credentials:
        info = self._auth.token_info
        if info is not None and info.is_expired():
            raise TokenExpiredError(
                f"the token {self._auth.fingerprint[:8]}... expired on "
                f"{info.expires_at:%Y-%m-%d}; it was not sent"
            )
        try:
            return Credentials.from_strategy(self._auth)
        except AuthenticationError as exc:
            exc.operation_id = endpoint.operation_id or None
            raise

    def _check_maintenance(self, endpoint: Endpoint) -> None:
        if not self._settings.check_maintenance or endpoint.maintenance is None:
            return
        left = maintenance_remaining(endpoint.maintenance, dt.datetime.now(dt.UTC))
        if left is not None:
            raise MaintenanceWindowError(endpoint.operation_id, left)

    async def _send(
        self,
        endpoint: Endpoint,
        request: httpx.Request,
        url: str,
        max_wait: float | None,
        trace: _Trace,
    ) -> Response[Any]:
        op_id = endpoint.operation_id or None
        trace.sent = False
        circuit = self._circuit
        if circuit is None:
            return await self._exchange(endpoint, request, max_wait, url, op_id, trace)
        probe = circuit.before_call()
        try:
            response = await self._exchange(endpoint, request, max_wait, url, op_id, trace)
        except _Silence:
            circuit.silent(probe)
            raise
        except ApiError as exc:
            if exc.http_status is None:
                circuit.released(probe)  # refused locally: says nothing about the server
            else:
                circuit.answered(probe)
            raise
        except BaseException:
            circuit.released(probe)
            raise
        circuit.answered(probe)
        return response

    async def _exchange(
        self,
        endpoint: Endpoint,
        request: httpx.Request,
        max_wait: float | None,
        url: str,
        op_id: str | None,
        trace: _Trace,
    ) -> Response[Any]:
        # Twins differing only by traceability take turns: the server would answer 409.
        async with self._in_flight.turn(_server_identity(self._auth.fingerprint, request)):
            return await self._exchange_now(endpoint, request, max_wait, url, op_id, trace)

    async def _exchange_now(
        self,
        endpoint: Endpoint,
        request: httpx.Request,
        max_wait: float | None,
        url: str,
        op_id: str | None,
        trace: _Trace,
    ) -> Response[Any]:
        asked = _now()
        async with self._governor.permit(
            self._auth.fingerprint, endpoint, max_wait=max_wait
        ) as permit:
            started = _now()
            trace.wait = started - asked
            permit.sending()  # may raise if a 429 paused the bucket since the grant
            trace.sent = True
            settings = self._settings
            timeout = request.extensions.get("timeout") or {}
            read = timeout.get("read") or settings.timeouts.read_for(endpoint.timeout_class)
            answer = await self._receive(
                request,
                settings.timeouts.total_for(read),
                settings.sizes.for_class(endpoint.timeout_class),
                url,
                op_id,
                permit,
                started,
            )
        if answer.status_code == 429:
            logger.warning(
                "429 from API Entreprise on %s; the governor pauses this bucket (Retry-After %s)",
                op_id or request.url.path,
                answer.headers.get("retry-after", "absent"),
                extra={"http_status": 429, "operation_id": op_id, "rate_limited": True},
            )
        request_id = answer.headers.get("x-request-id")
        rate_limit = parse_rate_limit(answer.headers)
        self._log(request, answer, started, request_id, rate_limit)
        try:
            body = answer.json() if answer.content else None
        except ValueError:
            body = None
            if answer.is_success:
                raise _NotAnEnvelope(
                    f"HTTP {answer.status_code} with a body that is not JSON",
                    url=url,
                    operation_id=op_id,
                    response=_received(answer, answer.text, rate_limit, op_id),
                ) from None
        if not answer.is_success:
            raise error_from_response(
                answer.status_code,
                body,
                method="GET",
                url=url,
                headers=answer.headers,
                operation_id=op_id,
                rate_limit=rate_limit,
                request_id=request_id,
                now=time.time(),
            )
        if not isinstance(body, dict):
            raise _NotAnEnvelope(
                f"HTTP {answer.status_code} with a JSON body that is not an object",
                url=url,
                operation_id=op_id,
                response=_received(answer, body, rate_limit, op_id),
            )
        return self._response(endpoint, body.get("data"), body, answer, rate_limit)

    async def _receive(
        self,
        request: httpx.Request,
        deadline: float,
        max_size: int,
        url: str,
        op_id: str | None,
        permit: Permit,
        started: float,
    ) -> httpx.Response:
        """Send ``request`` and read its answer whole, within ``deadline`` and ``max_size``.

        The governor learns from the headers as soon as they arrive. A server
        that dribbles its answer or sends too much ends in a
        :class:`TransportError` once the limit is hit, the connection dropped.
        """
        answer: httpx.Response | None = None
        with anyio.move_on_after(deadline) as scope:
            try:
                answer = await self._http.send(request, stream=True)
            except httpx.PoolTimeout as exc:
                # Local congestion (no free connection), not silence from the server.
                raise TransportError(
                    "no free connection in the pool", url=url, operation_id=op_id
                ) from _scrubbed(exc)
            except httpx.HTTPError as exc:
                self._log(request, None, started, None, None)
                what = "timed out" if isinstance(exc, httpx.TimeoutException) else "no answer"
                raise _Silence(
                    f"{what}: {type(exc).__name__} on {request.url.path}",
                    url=url,
                    operation_id=op_id,
                ) from _scrubbed(exc)
            permit.observe(answer.status_code, answer.headers)
            try:
                await _read_within(answer, max_size, url, op_id)
            finally:
                if not answer.is_closed:  # a body read to its end closed it already
                    with anyio.CancelScope(shield=True):
                        await answer.aclose()
        if scope.cancelled_caught:
            if answer is None:
                self._log(request, None, started, None, None)
                raise _Silence(
                    f"timed out: no answer within the {deadline:.1f} s deadline "
                    f"on {request.url.path}",
                    url=url,
                    operation_id=op_id,
                )
            raise TransportError(
                f"the answer to {request.url.path} took longer than the {deadline:.1f} s "
                "deadline of an attempt (a server sending too slowly)",
                url=url,
                operation_id=op_id,
            )
        assert answer is not None
        return answer

    def _response(
        self,
        endpoint: Endpoint,
        data: Any,
        raw: Any,
        answer: httpx.Response,
        rate_limit: Any,
        problems: tuple[str, ...] = (),
    ) -> Response[Any]:
        """The :class:`Response` of a 2xx: ``data`` structured leniently, problems logged once."""
        if endpoint.record is not None:
            data, found = structure_lenient(data, endpoint.record)
            problems += found
        if problems:
            self._report_drift(endpoint.operation_id or answer.url.path, problems)
        links = raw.get("links") if isinstance(raw, dict) else None
        meta = raw.get("meta") if isinstance(raw, dict) else None
        return Response(
            data=data,
            links=links if isinstance(links, dict) else {},
            meta=meta if isinstance(meta, dict) else {},
            raw=raw,
            http_status=answer.status_code,
            headers=answer.headers,
            rate_limit=rate_limit,
            request_id=answer.headers.get("x-request-id"),
            operation_id=endpoint.operation_id or None,
            problems=problems,
        )

    @staticmethod
    def _report_drift(where: str, problems: tuple[str, ...]) -> None:
        """Log each (operation, JSON path) mismatch once per process, at WARNING."""
        for line in problems:
            path = _drift_path(line)
            key = (where, path)
            if key in _logged_drift:
                continue
            _logged_drift.add(key)
            # The reason without the value: logs must not copy the API's data.
            reason = _WITHOUT_VALUE.sub(r"\1", line.rpartition(" @ ")[0])
            logger.warning(
                "%s: the answer does not fit its record at %s (%s); returned anyway with "
                "the value as sent kept (logged once per path)",
                where,
                path,
                reason,
                extra={"operation_id": where, "json_path": path, "payload_problem": reason},
            )

    def _log(
        self,
        request: httpx.Request,
        answer: httpx.Response | None,
        started: float,
        request_id: str | None,
        rate_limit: RateLimit | None,
    ) -> None:
        if not logger.isEnabledFor(logging.DEBUG):
            return
        duration_ms = round((_now() - started) * 1000, 1)
        status = answer.status_code if answer is not None else None
        remaining = None if rate_limit is None else rate_limit.remaining
        query = request.url.query.decode("ascii", "replace")
        path = request.url.path
        logger.debug(
            "GET %s -> %s in %.1f ms",
            request.url.path,
            status if status is not None else "no answer",
            duration_ms,
            extra={
                "method": request.method,
                "url": f"{path}?{query}" if query else path,
                "path": path,
                "query": query,
                "http_status": status,
                "duration_ms": duration_ms,
                "rate_limit_remaining": remaining,
                "request_id": request_id,
            },
        )

    # -- batches ---------------------------------------------------------------------

    def batch(
        self, operations: Operations, inputs: Inputs, **options: Unpack[BatchOptions]
    ) -> Batch:
        """Call ``operations`` for every input, at the governor's pace, resumably.

        ::

            async with client.batch("api_entreprise_v3_insee_unites_legales", sirens,
                                    output="out.jsonl") as outcomes:
                async for outcome in outcomes:
                    print(outcome.input, outcome.status)

        See :class:`~apientreprise_async.Batch` for the options.

        .. versionadded:: 0.1.0
        """
        return Batch(self, operations, inputs, **options)
