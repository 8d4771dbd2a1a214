"""API Entreprise in memory, strict enough that a client behaving well here behaves in production.

The emulator is a plain ASGI application rather than a Starlette one: this
module ships in the package and users' test suites import it, while the
package depends only on httpx, anyio, attrs and cattrs. Routing is already
done by the catalogue (:func:`match_path`), so a framework would add a
dependency for a few lines of dispatch. uvicorn is imported by
:meth:`Emulator.serve` only.

Time: every decision reads :func:`anyio.current_time`, so trio's
``MockClock`` runs hours of traffic in milliseconds. The wall clock the API
speaks (``RateLimit-Reset``, maintenance windows, token expiry) is derived
from it: ``epoch = epoch base + (now - monotonic base) + shift``, both bases
taken at the first request, so the headers stay consistent with the windows.

Order of the checks, as the real stack applies them (ban and throttles sit in
front of the application): ban, IP ceiling, route, token (401), per-token
bucket (429), privileges (403), traceability (422), registered cases,
identifiers (422), maintenance, in-flight duplicate (409), faults, data.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import pathlib
import random
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from email.utils import formatdate
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl

import anyio
import attrs
import httpx

from apientreprise_async._auth import TokenInfo, fingerprint
from apientreprise_async._catalogue import (
    DOWNLOAD_ENDPOINT,
    GROUP_LIMITS,
    IP_LIMIT,
    Endpoint,
    IdKind,
    get_endpoint,
    match_path,
)
from apientreprise_async._convert import _SCALARS, _plan, _top_kind
from apientreprise_async._errors import ApiEntrepriseError
from apientreprise_async._identifiers import normalize_identifier
from apientreprise_async._maintenance import maintenance_remaining

from ._data import PROVIDERS, builtin_answer, pdf_document

if TYPE_CHECKING:
    from ._server import RunningServer

__all__ = ["DroppedConnection", "Emulator", "EmulatorTransport", "Faults", "RecordedRequest"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WindowMode = Literal["aligned", "first_call"]
TokenState = Literal["valid", "expired", "blacklisted"]
Outcome = Literal["answered", "banned", "dropped"]
DriftKind = Literal["null", "removed", "object"]

_TRACEABILITY = ("context", "recipient", "object")
_MISSING = {"context": "00201", "object": "00202", "recipient": "00203"}
_UNPROCESSABLE = "Entité non traitable"
# Identifier errors as the OpenAPI examples give them; ``None`` names the parameter itself.
_ID_ERRORS: Mapping[IdKind, tuple[str, str, str | None]] = {
    IdKind.SIREN: ("00301", "Le numéro de siren n'est pas correctement formatté", None),
    IdKind.SIRET: ("00302", "Le numéro de siret n'est pas correctement formatté", None),
    IdKind.SIRET_OR_RNA: (
        "00303",
        "Le numéro de siret ou le numéro d'association indiqué n'est pas correctement formatté",
        "id",
    ),
    IdKind.SIRET_OR_EORI: (
        "00304",
        "Le numéro de siret ou le numéro EORI n'est pas correctement formatté",
        "id",
    ),
    IdKind.MONTH: ("00305", "Le format du mois n'est pas valide", None),
    IdKind.YEAR: ("00307", "L'année n'est pas correctement formatée", None),
    IdKind.SIREN_OR_SIRET_OR_RNA: (
        "00330",
        "Le numéro de siren ou le numéro de siret ou le numéro d'association indiqué "
        "n'est pas correctement formatté",
        "id",
    ),
    IdKind.SIREN_OR_RNA: (
        "00333",
        "Le numéro de siren ou le numéro d'association indiqué n'est pas correctement formatté",
        "id",
    ),
}
_NOT_FOUND_DETAIL = (
    "Le ou les paramètre(s) d'entrée n'existent pas, ne sont pas connus, ou ne comportent "
    "aucune information pour cet appel. Veuillez vérifier que votre recherche est couverte "
    "par le périmètre de l'API."
)
_BAN_PERIODS = 720  # 12 h of one-minute periods
_DOCUMENT_PERIODS = 1440  # links live 24 h at the real period


class DroppedConnection(httpx.RemoteProtocolError):
    """Raised by the application to cut a connection mid-answer (a simulated fault).

    In process it reaches the client as the httpx error a real reset gives;
    under :meth:`Emulator.serve`, uvicorn closes the socket after a partial body.
    """


def _error(
    code: str,
    title: str,
    detail: str,
    *,
    parameter: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "code": code,
        "title": title,
        "detail": detail,
        "source": {"parameter": parameter} if parameter else None,
        "meta": dict(meta or {}),
    }


def _provider(endpoint: Endpoint) -> tuple[str, str | None]:
    """The error-code prefix and ``meta.provider`` of an operation."""
    prefix, name = PROVIDERS.get(endpoint.provider, ("00", ""))
    return prefix, name or None


@attrs.frozen
class Faults:
    """Seeded misbehaviour of the providers behind the API.

    Args:
        latency: seconds the provider takes, after the server counted the call
            and before it answers: a number, ``(median, sigma)`` of a log-normal
            law, or a function of the emulator's ``random.Random``.
        uplink: seconds a request travels before the server counts it (the
            network on the way in), drawn the same way as ``latency``.
        share_502: share of answers replaced by a 502 provider error.
        share_504: share of answers replaced by a 504 network error.
        share_dropped: share of connections cut before the answer is complete.
        share_drifted: share of 200 JSON answers whose payload drifted, as a
            provider's does when it changes its format unannounced. One field
            is chosen: the shallowest in ``data`` that the operation's record
            declares as a scalar (string, number, boolean, date, enumeration)
            and that holds a string, number or boolean, the first in the
            answer's order among those as deep (objects are searched through
            the fields their record declares, lists through their first item;
            ``siren`` for a legal unit). The seed draws what happens to it: set
            to ``null``, removed, or replaced by the object ``{"valeur": <old
            value>, "source": "emulateur"}``; and a field no record knows,
            ``champ_ajoute_par_le_fournisseur``, is added next to it. The object
            case is always named in ``Response.problems``; null and removed are
            too unless the field is nullable or optional. Answers without such
            a field are sent unchanged. :attr:`RecordedRequest.drift` says what
            was done and where.
        retry_in: ``meta.retry_in`` of those 502/504 answers, in seconds.
        provider_timeout: like the real server, a provider slower than this
            gets a 504 (``XX002``) after that long.

    .. versionadded:: 0.1.0
    """

    latency: float | tuple[float, float] | Callable[[random.Random], float] = 0.0
    uplink: float | tuple[float, float] | Callable[[random.Random], float] = 0.0
    share_502: float = 0.0
    share_504: float = 0.0
    share_dropped: float = 0.0
    share_drifted: float = 0.0
    retry_in: float = 10.0
    provider_timeout: float = 10.0

    def draw_latency(self, rng: random.Random) -> float:
        """One provider latency drawn from the configured law."""
        return _draw(self.latency, rng)

    def draw_uplink(self, rng: random.Random) -> float:
        """One delay on the way in drawn from the configured law."""
        return _draw(self.uplink, rng)


def _draw(
    law: float | tuple[float, float] | Callable[[random.Random], float], rng: random.Random
) -> float:
    if callable(law):
        return max(0.0, float(law(rng)))
    if isinstance(law, tuple):
        median, sigma = law
        return rng.lognormvariate(math.log(median), sigma) if median > 0 else 0.0
    return max(0.0, float(law))


@attrs.frozen
class RecordedRequest:
    """One request as the emulator saw it (the token only as its fingerprint).

    ``status`` is ``None`` when no answer was given: the IP was banned
    (``outcome="banned"``, the request hangs) or the connection was cut
    (``outcome="dropped"``).
    """

    index: int
    monotonic: float
    epoch: float
    token: str | None
    operation_id: str | None
    bucket: str | None
    path: str
    params: Mapping[str, str]
    client_ip: str
    status: int | None
    outcome: Outcome
    request_id: str
    window: float | None = None
    """When the server window that counted the call (its token's bucket) opened, as an
    epoch; ``None`` for calls no token bucket counted."""
    drift: tuple[DriftKind, str] | None = None
    """How the answer's payload drifted (:attr:`Faults.share_drifted`) and the JSON path
    of the field, e.g. ``("object", "$.data.siren")``; ``None`` when sent as built."""


@attrs.define
class _Token:
    fingerprint: str
    privileges: frozenset[str] | None
    limits: dict[str, int]
    state: TokenState
    expires_epoch: float | None


@attrs.define
class _Window:
    start: float
    end: float
    count: int = 0
    refused_at: float | None = None  # monotonic time of the first 429 of this window


@attrs.frozen
class _Case:
    params: Mapping[str, str]
    status: int
    payload: bytes


@attrs.define
class _Document:
    owner: str
    expires_epoch: float
    title: str
    subject: str


@attrs.define
class _Answer:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = attrs.Factory(list)
    content_type: str = "application/json; charset=utf-8"
    drift: tuple[DriftKind, str] | None = None  # what Faults.share_drifted did to it


@attrs.frozen
class _Plan:
    answer: _Answer
    delay: float = 0.0
    drop: bool = False
    key: tuple[Any, ...] | None = None


def _json(status: int, payload: Any) -> _Answer:
    return _Answer(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"))


@attrs.frozen
class _Incoming:
    path: str
    query: dict[str, str]
    token: str | None = attrs.field(repr=False)  # the raw bearer token: never in a repr
    client_ip: str
    base_url: str
    method: str

    @classmethod
    def from_scope(cls, scope: Scope) -> _Incoming:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        auth = headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        query: dict[str, str] = {}
        for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), True):
            query.setdefault(key, value)
        client = scope.get("client") or ("127.0.0.1", 0)
        host = headers.get("host") or "{}:{}".format(*(scope.get("server") or ("testserver", 80)))
        return cls(
            path=scope["path"],
            query=query,
            token=token or None,
            client_ip=str(client[0]),
            base_url=f"{scope.get('scheme', 'http')}://{host}",
            method=scope.get("method", "GET"),
        )


class _Hang(Exception):
    """Internal: the IP is banned, never answer."""


class Emulator:
    """API Entreprise in memory: every catalogue route, its limits, bans, errors and data.

    Args:
        period: the length of a rate-limit window in seconds (60 as in
            production). The 12-hour ban and document lifetimes scale with it,
            so ``period=1.0`` runs a minute in a second. At 60, ``RateLimit-Reset``
            and ``Retry-After`` are whole seconds as the API sends them;
            otherwise they carry decimals.
        windows: ``"aligned"`` (default): fixed windows at multiples of the
            period, as the server code does; ``"first_call"``: a window opens
            at the first call after the previous one ended, as the public
            usage rules describe it.
        ip_limit: calls per period from one client IP, all tokens together.
        limits: per-bucket limit overrides for every token (bucket name or
            throttle group -> calls per period).
        start_epoch: the wall-clock time (Unix seconds) of the first request;
            the real time when ``None``.
        seed: seeds faults, request ids and document ids.
        faults: provider latency and failures; none by default.
        builtin_data: answer the built-in fictional companies.
        document_ttl: seconds a ``document_url`` stays valid (24 h scaled by
            ``period`` by default).
        clock_offset: seconds the server's wall clock runs ahead of the one it
            would otherwise use (``start_epoch`` or the real time); negative:
            behind. Its windows, ``RateLimit-Reset``, ``Retry-After`` and
            ``Date`` all follow that clock, as a real server's would.

    Every answer carries ``X-Request-ID``; every answer to a registered token
    carries ``RateLimit-Limit/Remaining/Reset`` of the bucket it drew from
    (401s and unknown routes belong to no bucket, so they have none).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        *,
        period: float = 60.0,
        windows: WindowMode = "aligned",
        ip_limit: int = IP_LIMIT,
        limits: Mapping[str, int] | None = None,
        start_epoch: float | None = None,
        seed: int = 0,
        faults: Faults | None = None,
        builtin_data: bool = True,
        document_ttl: float | None = None,
        clock_offset: float = 0.0,
    ) -> None:
        if period <= 0:
            raise ValueError("period must be positive")
        if windows not in ("aligned", "first_call"):
            raise ValueError("windows must be 'aligned' or 'first_call'")
        self.period = float(period)
        self.windows: WindowMode = windows
        self.ip_limit = ip_limit
        self.limits: dict[str, int] = dict(limits or {})
        self.faults = faults or Faults()
        self.builtin_data = builtin_data
        self.document_ttl = (
            document_ttl if document_ttl is not None else _DOCUMENT_PERIODS * self.period
        )
        self._whole_seconds = self.period == 60.0
        self._start_epoch = start_epoch
        self._epoch_base: float | None = None
        self._mono_base: float | None = None
        self._shift = float(clock_offset)
        self._rng = random.Random(seed)
        self._ids = random.Random(f"ids-{seed}")
        self._tokens: dict[str, _Token] = {}
        self._windows: dict[tuple[str, str], _Window] = {}
        self._ip_windows: dict[str, _Window] = {}
        self._bans: dict[str, float] = {}
        self._in_flight: set[tuple[Any, ...]] = set()
        self._cases: dict[str, list[_Case]] = {}
        self._documents: dict[str, _Document] = {}
        self._records: list[RecordedRequest] = []

    def __repr__(self) -> str:
        return (
            f"<Emulator period={self.period} windows={self.windows!r} tokens={len(self._tokens)} "
            f"requests={len(self._records)} banned={sorted(self._bans)}>"
        )

    # -- configuration ------------------------------------------------------------------

    def add_token(
        self,
        token: str,
        *,
        privileges: Iterable[str] | None = None,
        limits: Mapping[str, int] | None = None,
        state: TokenState = "valid",
    ) -> str:
        """Register a token and return it.

        Args:
            token: the bearer token clients will send (a JWT whose ``exp`` has
                passed is answered as expired).
            privileges: operation ids the token may call; ``None`` means all.
            limits: this token's own limits (bucket name or throttle group ->
                calls per period), as DINUM grants some users.
            state: ``"expired"`` or ``"blacklisted"`` to simulate 00103 / 00105.
        """
        if state not in ("valid", "expired", "blacklisted"):
            raise ValueError(f"state: {state!r} is not valid, expired or blacklisted")
        info = TokenInfo.from_jwt(token)
        expires = info.expires_at.timestamp() if info and info.expires_at else None
        self._tokens[token] = _Token(
            fingerprint=fingerprint(token),
            privileges=None if privileges is None else frozenset(privileges),
            limits=dict(limits or {}),
            state=state,
            expires_epoch=expires,
        )
        return token

    def add_case(
        self, operation_id: str, params: Mapping[str, Any], status: int, payload: Any
    ) -> None:
        """Answer ``status`` and ``payload`` when ``operation_id`` is called with ``params``.

        ``params`` are path and query parameters (traceability excluded); a
        call matches when it carries all of them, the most specific case
        winning. ``payload`` is a JSON string, bytes, or any JSON-able value.
        Registered cases are answered verbatim, before identifier checks, as
        the staging server does.
        """
        get_endpoint(operation_id)  # fail early on a typo
        if isinstance(payload, str):
            body = payload.encode("utf-8")
        elif isinstance(payload, bytes):
            body = payload
        else:
            body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        case = _Case({str(k): str(v) for k, v in params.items()}, status, body)
        cases = self._cases.setdefault(operation_id, [])
        cases[:] = [c for c in cases if c.params != case.params] + [case]

    @classmethod
    def from_staging_cases(cls, folder: str | pathlib.Path, **kwargs: Any) -> Emulator:
        """An emulator answering every case of a staging folder (needs PyYAML).

        ``folder`` holds ``<operation id>/*.yaml`` files with ``params``,
        ``status`` and ``payload`` (a JSON string), as in the official
        ``siade_staging_data``. Folders of operations missing from the
        catalogue are skipped. Other keywords go to :class:`Emulator`.
        """
        try:
            import yaml
        except ImportError:  # pragma: no cover - depends on the environment
            raise ModuleNotFoundError(
                "Emulator.from_staging_cases() needs PyYAML: pip install pyyaml"
            ) from None
        emulator = cls(**kwargs)
        emulator.load_staging_cases(folder, loader=yaml.safe_load)
        return emulator

    def load_staging_cases(
        self, folder: str | pathlib.Path, *, loader: Callable[[str], Any] | None = None
    ) -> int:
        """Register every case of a staging folder; return how many were loaded."""
        if loader is None:
            import yaml

            loader = yaml.safe_load
        root = pathlib.Path(folder)
        loaded = 0
        for path in sorted(root.glob("*/*.y*ml")):
            operation_id = path.parent.name
            try:
                get_endpoint(operation_id)
            except ApiEntrepriseError:
                continue
            case = loader(path.read_text("utf-8"))
            self.add_case(operation_id, case.get("params") or {}, case["status"], case["payload"])
            loaded += 1
        return loaded

    def shift_wall_clock(self, seconds: float) -> None:
        """Move the emulator's wall clock (not its windows' monotonic time) by ``seconds``."""
        self._shift += seconds

    def lift_bans(self) -> None:
        """Forget every ban (the real API never does; handy between test phases)."""
        self._bans.clear()

    # -- inspection ---------------------------------------------------------------------

    @property
    def requests(self) -> tuple[RecordedRequest, ...]:
        """Every request received, in arrival order."""
        return tuple(self._records)

    def epoch(self) -> float:
        """The emulator's current wall-clock time (call it inside the event loop)."""
        return self._clock()[1]

    def banned_until(self, client_ip: str = "127.0.0.1") -> float | None:
        """The epoch at which ``client_ip``'s ban ends, ``None`` if not banned."""
        until = self._bans.get(client_ip)
        if until is None:
            return None
        mono, epoch = self._clock()
        return epoch + (until - mono) if until > mono else None

    def calls(
        self,
        *,
        token: str | None = None,
        bucket: str | None = None,
        operation_id: str | None = None,
        client_ip: str | None = None,
        status: int | None = None,
    ) -> tuple[RecordedRequest, ...]:
        """The recorded requests matching every filter given (``token`` is the raw token)."""
        fp = fingerprint(token) if token is not None else None
        return tuple(
            r
            for r in self._records
            if (fp is None or r.token == fp)
            and (bucket is None or r.bucket == bucket)
            and (operation_id is None or r.operation_id == operation_id)
            and (client_ip is None or r.client_ip == client_ip)
            and (status is None or r.status == status)
        )

    def max_calls_in_any_window(
        self,
        window: float | None = None,
        *,
        token: str | None = None,
        bucket: str | None = None,
        operation_id: str | None = None,
        client_ip: str | None = None,
    ) -> int:
        """The most requests that arrived within any sliding span of ``window`` seconds.

        The span defaults to the period. Use it to assert that a client never
        sent more than ``L`` calls per minute, whatever the window alignment.
        """
        span = self.period if window is None else window
        times = sorted(
            r.monotonic
            for r in self.calls(
                token=token, bucket=bucket, operation_id=operation_id, client_ip=client_ip
            )
        )
        best = 0
        first = 0
        for last, arrived in enumerate(times):
            while arrived - times[first] >= span:
                first += 1
            best = max(best, last - first + 1)
        return best

    def max_calls_in_a_window(
        self,
        *,
        token: str | None = None,
        bucket: str | None = None,
        operation_id: str | None = None,
    ) -> int:
        """The most calls one of the server's own windows counted, per token and bucket.

        What the server's limits bind (429s included: the server counts them).
        :meth:`max_calls_in_any_window` is stricter: a client may use the end
        of one window and the start of the next, as the server allows.
        """
        counts = Counter(
            (r.token, r.bucket, r.window)
            for r in self.calls(token=token, bucket=bucket, operation_id=operation_id)
            if r.window is not None
        )
        return max(counts.values(), default=0)

    # -- transports -----------------------------------------------------------------------

    def transport(self, *, client_ip: str = "127.0.0.1") -> EmulatorTransport:
        """An httpx transport to this emulator that enforces read timeouts like a network."""
        return EmulatorTransport(self, client_ip=client_ip)

    def serve(self, *, port: int = 0, host: str = "127.0.0.1") -> RunningServer:
        """Serve the emulator with uvicorn on loopback in a background thread.

        Returns a handle whose ``url`` is the bound base URL; use it as a
        context manager (``with`` or ``async with`` give the URL) or call
        ``stop()``. Needs uvicorn (extras ``cli`` or ``test``).
        """
        from ._server import RunningServer

        return RunningServer(self.app, host=host, port=port)

    # -- clock and windows ---------------------------------------------------------------

    def _clock(self) -> tuple[float, float]:
        mono = anyio.current_time()
        if self._mono_base is None or self._epoch_base is None:
            self._mono_base = mono
            # The only read of the real clock, and only when no start was given.
            self._epoch_base = self._start_epoch if self._start_epoch is not None else _now()
        return mono, self._epoch_base + (mono - self._mono_base) + self._shift

    def _window(self, store: dict[Any, _Window], key: Any, epoch: float) -> _Window:
        current = store.get(key)
        if current is not None and current.start <= epoch < current.end:
            return current
        if self.windows == "aligned":
            start = math.floor(epoch / self.period) * self.period
        else:
            # The real server counts in whole seconds.
            start = math.floor(epoch) if self._whole_seconds else epoch
        fresh = _Window(start, start + self.period)
        store[key] = fresh
        return fresh

    def _limit(self, token: _Token, endpoint: Endpoint) -> int:
        for table in (token.limits, self.limits):
            for name in (endpoint.bucket, endpoint.rate_group):
                if name in table:
                    return table[name]
        return GROUP_LIMITS.get(endpoint.rate_group, GROUP_LIMITS["json_resources_entreprise"])

    def _seconds(self, value: float) -> str:
        if self._whole_seconds:
            return str(math.ceil(value - 1e-9))
        # Round up at the microsecond: waiting the announced time is always enough.
        text = f"{math.ceil(value * 1e6 - 1e-6) / 1e6:.6f}".rstrip("0").rstrip(".")
        return text or "0"

    def _rate_headers(self, limit: int, window: _Window) -> list[tuple[str, str]]:
        return [
            ("RateLimit-Limit", str(limit)),
            ("RateLimit-Remaining", str(max(0, limit - window.count))),
            ("RateLimit-Reset", self._seconds(window.end)),
        ]

    # -- ASGI ------------------------------------------------------------------------------

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI application (pass it to ``httpx.ASGITransport`` or any ASGI server)."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        incoming = _Incoming.from_scope(scope)
        request_id = str(uuid.UUID(int=self._ids.getrandbits(128), version=4))
        if self.faults.uplink:
            # On the way in: the server counts the call only once it arrives.
            await anyio.sleep(self.faults.draw_uplink(self._rng))
        try:
            plan = self._decide(incoming, request_id)
        except _Hang:
            # Never answer: wait until the client gives up and disconnects.
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        try:
            if plan.delay > 0:
                await anyio.sleep(plan.delay)
            await self._send(send, plan, request_id)
        finally:
            if plan.key is not None:
                self._in_flight.discard(plan.key)

    async def _send(self, send: Send, plan: _Plan, request_id: str) -> None:
        answer = plan.answer
        headers = [
            (b"content-type", answer.content_type.encode()),
            (b"content-length", str(len(answer.body)).encode()),
            (b"x-request-id", request_id.encode()),
            # On the server's own clock, as RateLimit-Reset (whole seconds, RFC 9110).
            (b"date", formatdate(self._clock()[1], usegmt=True).encode()),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in answer.headers]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        if plan.drop:
            await send({"type": "http.response.body", "body": answer.body[:8], "more_body": True})
            raise DroppedConnection("the emulator dropped the connection (simulated fault)")
        await send({"type": "http.response.body", "body": answer.body})

    def _record(
        self,
        incoming: _Incoming,
        mono: float,
        epoch: float,
        request_id: str,
        status: int | None,
        *,
        token: _Token | None = None,
        endpoint: Endpoint | None = None,
        params: Mapping[str, str] | None = None,
        outcome: Outcome = "answered",
        window: float | None = None,
        drift: tuple[DriftKind, str] | None = None,
    ) -> None:
        self._records.append(
            RecordedRequest(
                index=len(self._records),
                monotonic=mono,
                epoch=epoch,
                token=token.fingerprint if token else None,
                operation_id=endpoint.operation_id if endpoint else None,
                bucket=endpoint.bucket if endpoint else None,
                path=incoming.path,
                params=dict(params if params is not None else incoming.query),
                client_ip=incoming.client_ip,
                status=status,
                outcome=outcome,
                request_id=request_id,
                window=window,
                drift=drift,
            )
        )

    def _decide(self, incoming: _Incoming, request_id: str) -> _Plan:
        """Everything but the waiting: the answer, its delay, whether to cut it.

        It never awaits, so each request's checks and counters are atomic.
        """
        mono, epoch = self._clock()
        ip = incoming.client_ip

        def done(answer: _Answer, **kw: Any) -> _Plan:
            self._record(incoming, mono, epoch, request_id, answer.status, **kw)
            return _Plan(answer)

        def hang(**kw: Any) -> _Hang:
            self._bans[ip] = max(self._bans.get(ip, 0.0), mono + _BAN_PERIODS * self.period)
            self._record(incoming, mono, epoch, request_id, None, outcome="banned", **kw)
            return _Hang()

        if self._bans.get(ip, -math.inf) > mono:
            raise hang()
        ip_window = self._window(self._ip_windows, ip, epoch)
        ip_window.count += 1
        if ip_window.count > self.ip_limit:
            raise hang()

        if incoming.method not in ("GET", "HEAD"):
            return done(_json(405, {"errors": [_error("00405", "Méthode", "GET only")]}))
        if incoming.path.startswith("/proxy/files/"):
            return self._download(incoming, mono, epoch, request_id, hang)
        found = match_path(incoming.path)
        if found is None:
            detail = f"no route for {incoming.path}"
            return done(_json(404, {"errors": [_error("00404", "Route inconnue", detail)]}))
        endpoint, values = found

        token, refusal = self._authenticate(incoming.token, epoch)
        if token is None:
            assert refusal is not None
            return done(refusal, endpoint=endpoint)

        # Per-token bucket, before the application as with the real throttles.
        limit = self._limit(token, endpoint)
        window = self._window(self._windows, (token.fingerprint, endpoint.bucket), epoch)
        kw: dict[str, Any] = {"token": token, "endpoint": endpoint}
        if window.refused_at is not None and mono > window.refused_at:
            raise hang(**kw)  # called again before Retry-After ended
        window.count += 1
        kw["window"] = window.start
        rate = self._rate_headers(limit, window)
        if window.count > limit:
            window.refused_at = mono
            answer = _json(429, {"errors": [_error("00429", "Trop de requêtes", _TOO_MANY)]})
            answer.headers = [*rate, ("Retry-After", self._seconds(window.end - epoch))]
            return done(answer, **kw)

        answer_or_none = self._application(incoming, endpoint, values, token, epoch)
        if isinstance(answer_or_none, _Answer):
            answer_or_none.headers = rate + answer_or_none.headers
            return done(answer_or_none, **kw)
        answer, params, duplicate_key = answer_or_none
        answer.headers = rate + answer.headers
        kw["params"] = params
        if duplicate_key in self._in_flight:
            conflict = _json(409, {"errors": [_error("00015", "Conflit", _CONFLICT)]})
            conflict.headers = rate
            return done(conflict, **kw)
        delay, drop, answer = self._faults(endpoint, answer, rate)
        outcome: Outcome = "dropped" if drop else "answered"
        status = None if drop else answer.status
        self._record(
            incoming, mono, epoch, request_id, status, outcome=outcome, drift=answer.drift, **kw
        )
        # Held until the answer is sent: an identical call meanwhile gets a 409.
        self._in_flight.add(duplicate_key)
        return _Plan(answer, delay, drop, duplicate_key)

    def _authenticate(self, raw: str | None, epoch: float) -> tuple[_Token | None, _Answer | None]:
        token = self._tokens.get(raw) if raw else None
        if token is None:
            item = _error("00101", "Interdit", _INVALID_TOKEN, parameter="token")
            return None, _json(401, {"errors": [item]})
        expired = token.expires_epoch is not None and epoch >= token.expires_epoch
        if token.state == "expired" or expired:
            item = _error("00103", "Jeton expiré", _EXPIRED_TOKEN, parameter="token")
            return None, _json(401, {"errors": [item]})
        if token.state == "blacklisted":
            item = _error("00105", "Jeton sur liste noire", _BLACKLISTED, parameter="token")
            return None, _json(401, {"errors": [item]})
        return token, None

    def _application(
        self,
        incoming: _Incoming,
        endpoint: Endpoint,
        values: Mapping[str, str],
        token: _Token,
        epoch: float,
    ) -> _Answer | tuple[_Answer, dict[str, str], tuple[Any, ...]]:
        """Privileges, traceability, cases, identifiers, maintenance, data."""
        op = endpoint.operation_id
        if token.privileges is not None and op not in token.privileges and op != _PRIVILEGES:
            item = _error("00100", "Privilèges insuffisants", _NO_PRIVILEGE, parameter="token")
            return _json(403, {"errors": [item]})
        if endpoint.traceability:
            missing = [
                _error(
                    _MISSING[name],
                    _UNPROCESSABLE,
                    f"Le paramètre {name} est obligatoire",
                    parameter=name,
                )
                for name in ("context", "object", "recipient")
                if not incoming.query.get(name, "").strip()
            ]
            if missing:
                return _json(422, {"errors": missing})
        params = dict(values)
        params.update({k: v for k, v in incoming.query.items() if k not in _TRACEABILITY})
        duplicate_key = (token.fingerprint, op, tuple(sorted(params.items())))
        case = self._find_case(op, params)
        if case is None:
            invalid = self._check_identifiers(endpoint, values, incoming.query)
            if invalid is not None:
                return invalid
        if endpoint.maintenance is not None:
            utc = dt.datetime.fromtimestamp(epoch, dt.UTC)
            left = maintenance_remaining(endpoint.maintenance, utc)
            if left is not None:
                prefix, provider = _provider(endpoint)
                meta = {"provider": provider, "retry_in": math.ceil(left)}
                item = _error(f"{prefix}001", "Service non disponible", _UNAVAILABLE, meta=meta)
                return _json(504, {"errors": [item]})
        if case is not None:
            return _Answer(case.status, case.payload), params, duplicate_key
        return self._data(incoming, endpoint, values, token, epoch), params, duplicate_key

    def _find_case(self, operation_id: str, params: Mapping[str, str]) -> _Case | None:
        best: _Case | None = None
        for case in self._cases.get(operation_id, ()):
            if all(params.get(k) == v for k, v in case.params.items()) and (
                best is None or len(case.params) > len(best.params)
            ):
                best = case
        return best

    def _check_identifiers(
        self, endpoint: Endpoint, values: Mapping[str, str], query: Mapping[str, str]
    ) -> _Answer | None:
        errors = []
        for param in endpoint.path_params:
            try:
                normalize_identifier(param.kind, values.get(param.name), param.name)
            except ApiEntrepriseError:
                code, detail, named = _ID_ERRORS.get(
                    param.kind, ("00303", f"Le paramètre {param.name} n'est pas valide", None)
                )
                errors.append(_error(code, _UNPROCESSABLE, detail, parameter=named or param.name))
        limit = query.get("limit")
        takes_limit = any(q.name == "limit" for q in endpoint.query_params)
        if takes_limit and limit is not None and not limit.isdigit():
            detail = "Le paramètre limit n'est pas correctement formatté"
            errors.append(_error("00313", _UNPROCESSABLE, detail, parameter="limit"))
        return _json(422, {"errors": errors}) if errors else None

    def _data(
        self,
        incoming: _Incoming,
        endpoint: Endpoint,
        values: Mapping[str, str],
        token: _Token,
        epoch: float,
    ) -> _Answer:
        if endpoint.operation_id == _PRIVILEGES:
            granted = (
                sorted(token.privileges)
                if token.privileges is not None
                else sorted(e.operation_id for e in _all_operations())
            )
            return _json(200, {"data": {"privileges": granted}, "links": {}, "meta": {}})
        normalized = {
            p.name: normalize_identifier(p.kind, values[p.name], p.name)
            for p in endpoint.path_params
        }

        def make_document(title: str, subject: str) -> tuple[str, int]:
            doc_id = f"{self._ids.getrandbits(64):016x}.pdf"
            self._documents[doc_id] = _Document(
                token.fingerprint, epoch + self.document_ttl, title, subject
            )
            return f"{incoming.base_url}/proxy/files/{doc_id}", max(1, round(self.document_ttl))

        found = (
            builtin_answer(endpoint, normalized, incoming.base_url, make_document)
            if self.builtin_data
            else None
        )
        if found is None:
            prefix, provider = _provider(endpoint)
            meta = {"provider": provider} if provider else {}
            item = _error(f"{prefix}003", "Entité non trouvée", _NOT_FOUND_DETAIL, meta=meta)
            return _json(404, {"errors": [item]})
        return _json(*found)

    def _download(
        self,
        incoming: _Incoming,
        mono: float,
        epoch: float,
        request_id: str,
        hang: Callable[..., _Hang],
    ) -> _Plan:
        doc_id = incoming.path.rsplit("/", 1)[-1]
        doc = self._documents.get(doc_id)
        if doc is None or epoch >= doc.expires_epoch:
            item = _error("00404", "Document introuvable", "Lien inconnu ou expiré")
            answer = _json(404, {"errors": [item]})
            self._record(incoming, mono, epoch, request_id, 404, endpoint=DOWNLOAD_ENDPOINT)
            return _Plan(answer)
        # Downloads draw from the proxied_files bucket of the token that asked for the document.
        owner = next((t for t in self._tokens.values() if t.fingerprint == doc.owner), None)
        limit = self._limit(owner, DOWNLOAD_ENDPOINT) if owner else GROUP_LIMITS["proxied_files"]
        window = self._window(self._windows, (doc.owner, DOWNLOAD_ENDPOINT.bucket), epoch)
        kw: dict[str, Any] = {"token": owner, "endpoint": DOWNLOAD_ENDPOINT}
        if window.refused_at is not None and mono > window.refused_at:
            raise hang(**kw)
        window.count += 1
        kw["window"] = window.start
        rate = self._rate_headers(limit, window)
        if window.count > limit:
            window.refused_at = mono
            answer = _json(429, {"errors": [_error("00429", "Trop de requêtes", _TOO_MANY)]})
            answer.headers = [*rate, ("Retry-After", self._seconds(window.end - epoch))]
        else:
            answer = _Answer(200, pdf_document(doc.title, doc.subject), rate, "application/pdf")
        self._record(incoming, mono, epoch, request_id, answer.status, **kw)
        return _Plan(answer)

    def _faults(
        self, endpoint: Endpoint, answer: _Answer, rate: list[tuple[str, str]]
    ) -> tuple[float, bool, _Answer]:
        f = self.faults
        if endpoint.operation_id == _PRIVILEGES:
            return 0.0, False, answer
        draw = self._rng.random()
        latency = f.draw_latency(self._rng)
        prefix, provider = _provider(endpoint)
        meta: dict[str, Any] = {"provider": provider} if provider else {}
        if latency > f.provider_timeout:
            item = _error(f"{prefix}002", "Intermédiaire hors-délai", _TIMEOUT, meta=meta)
            failed = _json(504, {"errors": [item]})
            failed.headers = rate
            return f.provider_timeout, False, failed
        if draw < f.share_dropped:
            return latency, True, answer
        draw -= f.share_dropped
        if draw < f.share_502:
            meta = {"provider": provider, "retry_in": f.retry_in}
            title = "Erreur inconnue du fournisseur de données"
            item = _error(f"{prefix}999", title, _UNKNOWN, meta=meta)
            failed = _json(502, {"errors": [item]})
            failed.headers = rate
            return latency, False, failed
        draw -= f.share_502
        if draw < f.share_504:
            item = _error("00501", "Erreur réseau", _NETWORK, meta={"retry_in": f.retry_in})
            failed = _json(504, {"errors": [item]})
            failed.headers = rate
            return latency, False, failed
        draw -= f.share_504
        if draw < f.share_drifted and answer.status == 200:
            return latency, False, self._drift(endpoint, answer)
        return latency, False, answer

    def _drift(self, endpoint: Endpoint, answer: _Answer) -> _Answer:
        """The answer with its payload drifted as :attr:`Faults.share_drifted` says."""
        try:
            body = json.loads(answer.body)
        except ValueError:
            return answer
        found = _drift_target(endpoint.record, body.get("data") if isinstance(body, dict) else None)
        if found is None:
            return answer
        target, name, where = found
        how: DriftKind = self._rng.choice(("null", "removed", "object"))
        if how == "null":
            target[name] = None
        elif how == "removed":
            del target[name]
        else:
            target[name] = {"valeur": target[name], "source": "emulateur"}
        target[_NEW_FIELD] = {"ajoute": True}
        return attrs.evolve(answer, body=_json(200, body).body, drift=(how, where))


def _drift_target(record: Any, data: Any) -> tuple[dict[str, Any], str, str] | None:
    """The object, field name and JSON path a drift changes (see :attr:`Faults.share_drifted`).

    Breadth first through the fields the record declares (a list through its
    first item): the shallowest field declared as a scalar that holds one,
    first in the answer's order among fields as deep.
    """
    if record is None:
        return None
    queue: deque[tuple[Any, Any, str]] = deque([(_top_kind(record), data, "$.data")])
    while queue:
        kind, value, where = queue.popleft()
        if kind.tag == "optional":
            kind = kind.inner
        if kind.tag == "tuple" and isinstance(value, list) and value:
            queue.append((kind.inner, value[0], f"{where}[0]"))
        if kind.tag != "record" or not isinstance(value, dict):
            continue
        declared = {field.name: field.kind for field in _plan(kind.inner)}
        for name, item in value.items():
            field_kind = declared.get(name)
            if field_kind is None:
                continue
            inner = field_kind.inner if field_kind.tag == "optional" else field_kind
            if inner.tag in _SCALAR_KINDS and isinstance(item, str | int | float):
                return value, name, f"{where}.{name}"
            queue.append((field_kind, item, f"{where}.{name}"))
    return None


class EmulatorTransport(httpx.AsyncBaseTransport):
    """``httpx.ASGITransport`` to an :class:`Emulator`, with a network's timeouts.

    ``httpx.ASGITransport`` ignores timeouts, so a banned client would wait
    forever; this transport applies the request's read timeout and raises
    :class:`httpx.ReadTimeout` as a real socket would. ``client_ip`` sets the
    address the emulator sees, to simulate several machines.

    .. versionadded:: 0.1.0
    """

    def __init__(self, emulator: Emulator, *, client_ip: str = "127.0.0.1") -> None:
        self.emulator = emulator
        self.client_ip = client_ip
        self._inner = httpx.ASGITransport(app=emulator.app, client=(client_ip, 50000))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Run the request through the emulator, giving up after the read timeout."""
        timeouts = request.extensions.get("timeout") or {}
        read = timeouts.get("read")
        with anyio.move_on_after(read if read is not None else math.inf) as scope:
            return await self._inner.handle_async_request(request)
        assert scope.cancelled_caught
        raise httpx.ReadTimeout(f"no answer from the emulator within {read} s", request=request)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self._inner.__aexit__(exc_type, exc_value, traceback)


def _now() -> float:
    import time

    return time.time()


def _all_operations() -> tuple[Endpoint, ...]:
    from apientreprise_async._catalogue import all_endpoints

    return all_endpoints()


_PRIVILEGES = "api_entreprise_privileges"
_NEW_FIELD = "champ_ajoute_par_le_fournisseur"
# Field types no JSON object fits: an object there is always named in ``problems``.
_SCALAR_KINDS = frozenset({*_SCALARS.values(), "enum", "timestamp"})
_TOO_MANY = "Vous avez effectué trop de requêtes"
_CONFLICT = (
    "Une requête associé à votre jeton est déjà en cours de traitement pour ces paramètres. "
    "Veuillez attendre la fin du traitement avant d'effectuer une nouvelle requête."
)
_INVALID_TOKEN = "Votre token n'est pas valide ou n'est pas renseigné"
_EXPIRED_TOKEN = "Votre token est expiré. Vous devez refaire une demande"
_BLACKLISTED = (
    "Votre jeton est sur liste noire, celui-ci a certainement été divulgué sur un canal "
    "non-sécurisé. Vous pouvez trouver un jeton valide sur votre espace personnel: "
    "https://entreprise.api.gouv.fr/compte"
)
_NO_PRIVILEGE = (
    "Votre token est valide mais vos privilèges sont insuffisants. "
    "Listez vos privilèges sur /v2/privileges"
)
_UNAVAILABLE = "Service du fournisseur de données temporairement indisponible ou en maintenance."
_TIMEOUT = "Temps d’attente d’une réponse du fournisseur de données écoulé."
_UNKNOWN = (
    "La réponse retournée par le fournisseur de données est invalide et inconnue de notre "
    "service. L'équipe technique a été notifiée de cette erreur pour investigation."
)
_NETWORK = (
    "Problème de connexion au serveur distant. L'erreur peut venir soit du fournisseur, soit "
    "de API Entreprise. Il s'agit souvent d'une erreur temporaire."
)
