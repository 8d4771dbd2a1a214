"""``AsyncClient``: configuration, validation, the governor, one HTTP pool, error mapping."""

from __future__ import annotations

import datetime as dt
import enum
import logging
import os
import time
import warnings
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import anyio
import attrs
import httpx

from . import _version
from ._auth import AuthStrategy, BearerToken, TokenInfo
from ._catalogue import Endpoint, IdKind, get_endpoint, match_path
from ._circuit import Circuit, CircuitPolicy
from ._coalesce import Coalescer
from ._config import USE_DEFAULT, Settings, Timeouts, UseDefault, resolve_base_url
from ._errors import (
    ApiEntrepriseError,
    ApiError,
    AuthenticationError,
    InvalidParameterError,
    MaintenanceWindowError,
    RateLimitError,
    TokenExpiredError,
    TransportError,
    error_from_response,
)
from ._gen_resources import Resources
from ._governor import Governor, Limits
from ._identifiers import normalize_identifier, validate_traceability
from ._maintenance import maintenance_remaining
from ._response import Response, parse_rate_limit
from ._retry import Attempt, RetryPolicy, annotate, describe

__all__ = ["AsyncClient", "TokenExpiryWarning"]

logger = logging.getLogger("apientreprise_async")

_EXPIRY_THRESHOLDS = (7, 30, 90)
_warned_expiry: set[tuple[str, int]] = set()


class TokenExpiryWarning(UserWarning):
    """The token expires within 90, 30 or 7 days."""


_process_governor: Governor | None = None


def _default_governor() -> Governor:
    """The governor shared by every client of the process that was given none.

    Sharing it is what keeps the whole process under the per-IP ceiling.
    """
    global _process_governor
    if _process_governor is None:
        _process_governor = Governor()
    return _process_governor


class _Silence(TransportError):
    """No HTTP answer at all: what the circuit counts."""


class _State(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


def _user_agent() -> str:
    return (
        f"api-entreprise-python/{_version.version()} "
        f"(apientreprise_async; +https://github.com/datagouv/apistration)"
    )


class AsyncClient(Resources):
    """Asynchronous client for API Entreprise.

    Use it as an async context manager; one instance is safe to share between
    tasks. Every call is checked locally, admitted by the governor, sent,
    then either returned as a :class:`Response` or raised as an
    :class:`ApiEntrepriseError` subclass.

    Args:
        token: the API Entreprise JWT (else ``API_ENTREPRISE_TOKEN``).
        auth: an :class:`AuthStrategy` instead of ``token``.
        recipient, context, object: traceability defaults, overridable per call.
        environment: ``"production"`` (default) or ``"staging"`` (else ``API_ENTREPRISE_ENV``).
        base_url: any base URL (else ``API_ENTREPRISE_BASE_URL``, else the environment's).
        timeouts: per-call-class timeouts.
        limits: rate limits for a governor private to this client.
        governor: a :class:`Governor` to share; defaults to the process-wide one.
        max_wait: admission deadline in seconds (``None`` waits as long as needed).
        transport: an httpx async transport (respx, ``httpx.ASGITransport``...).
        http_client: a caller-owned ``httpx.AsyncClient``; never closed by this client.
        verify: a CA bundle path or an ``ssl.SSLContext``; ``False`` is refused.
        check_maintenance: refuse calls locally during maintenance windows.
        retry_rate_limited: after a 429, wait for the governor's pause and go again.
        retry: a :class:`RetryPolicy` for transient failures (off by default).
        circuit: when to stop sending after repeated silence (``None`` disables it).
        coalesce: share one request between concurrent identical calls.
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
        url, env_name = resolve_base_url(base_url, environment)
        settings = Settings(
            base_url=url,
            environment=env_name,
            recipient=recipient,
            context=context,
            object=object,
            timeouts=timeouts or Timeouts(),
            max_wait=max_wait,
            user_agent=user_agent or _user_agent(),
            verify=verify,
            check_maintenance=check_maintenance,
            retry_rate_limited=retry_rate_limited,
            retry=retry,
            coalesce=coalesce,
        )
        if governor is None:
            governor = Governor(limits) if limits is not None else _default_governor()
        owns_http = http_client is None
        if http_client is None:
            http_client = httpx.AsyncClient(
                transport=transport,
                verify=verify,
                timeout=httpx.Timeout(settings.timeouts.json, connect=settings.timeouts.connect),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
                follow_redirects=False,
            )
        self._circuit = Circuit(circuit) if circuit is not None else None
        self._coalescer: Coalescer[Response[Any]] = Coalescer()
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
        recipient: str | UseDefault | None = USE_DEFAULT,
        context: str | UseDefault | None = USE_DEFAULT,
        object: str | UseDefault | None = USE_DEFAULT,
        timeouts: Timeouts | UseDefault = USE_DEFAULT,
        max_wait: float | UseDefault | None = USE_DEFAULT,
        check_maintenance: bool | UseDefault = USE_DEFAULT,
        retry_rate_limited: bool | UseDefault = USE_DEFAULT,
        retry: RetryPolicy | UseDefault | None = USE_DEFAULT,
        coalesce: bool | UseDefault = USE_DEFAULT,
    ) -> AsyncClient:
        """A new client with some settings changed, sharing this one's pool and governor.

        The new client never closes the shared pool; close the original when done.
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
            )
            if value is not USE_DEFAULT
        }
        clone = AsyncClient.__new__(AsyncClient)
        clone._circuit = self._circuit
        clone._coalescer = self._coalescer
        clone._setup(
            attrs.evolve(self._settings, **changes),
            self._auth,
            self._governor,
            self._http,
            owns_http=False,
        )
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
        **params: Any,
    ) -> Response[Any]:
        """Call an operation of the catalogue by its ``x-operationId``.

        Path and query parameters are keywords (``siren="418166096"``).

        Raises:
            UnknownOperationError: no such operation.
            InvalidParameterError: a parameter is missing or malformed (nothing sent).
        """
        endpoint = get_endpoint(operation_id)
        path_values: dict[str, Any] = {}
        for param in endpoint.path_params:
            if param.name not in params:
                raise InvalidParameterError(param.name, "is required by " + operation_id)
            path_values[param.name] = params.pop(param.name)
        known = {q.name for q in endpoint.query_params}
        unknown = set(params) - known
        if unknown:
            raise InvalidParameterError(sorted(unknown)[0], f"is not a parameter of {operation_id}")
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
        )

    async def get(
        self,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        max_wait: float | UseDefault | None = USE_DEFAULT,
    ) -> Response[Any]:
        """Low-level GET of any path, through the same pipeline as typed methods.

        Traceability parameters in ``params`` override the client defaults. A
        path of the catalogue is validated and governed as its operation; any
        other path is governed in the JSON group.
        """
        query = dict(params or {})
        recipient = query.pop("recipient", None)
        context = query.pop("context", None)
        object_ = query.pop("object", None)
        path = "/" + path.lstrip("/")
        found = match_path(path)
        if found is None:
            endpoint = Endpoint(operation_id="", path=path, provider="", version=0)
            path_values: dict[str, Any] = {}
        else:
            endpoint, path_values = found
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
        )

    def _prepare(
        self,
        endpoint: Endpoint,
        path_values: Mapping[str, Any],
        query: Mapping[str, Any],
        recipient: str | None,
        context: str | None,
        object_: str | None,
    ) -> tuple[str, dict[str, Any]]:
        """Validate everything locally; return the path and the query to send."""
        s = self._settings
        params: dict[str, Any] = {}
        if endpoint.traceability:
            params.update(
                validate_traceability(
                    recipient if recipient is not None else s.recipient,
                    context if context is not None else s.context,
                    object_ if object_ is not None else s.object,
                )
            )
        values = {
            p.name: normalize_identifier(p.kind, path_values.get(p.name), p.name)
            for p in endpoint.path_params
        }
        by_name = {q.name: q for q in endpoint.query_params}
        for name, value in query.items():
            if value is None:
                continue
            spec = by_name.get(name)
            if spec is not None and spec.choices and str(value) not in spec.choices:
                raise InvalidParameterError(name, f"{value!r} is not one of {list(spec.choices)}")
            if spec is not None and spec.kind is not IdKind.TEXT:
                value = normalize_identifier(spec.kind, value, name)
            params[name] = value
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
    ) -> Response[Any]:
        if self._state is _State.CLOSED:
            raise RuntimeError("this AsyncClient is closed")
        path, params = self._prepare(endpoint, path_values, query, recipient, context, object_)
        headers = self._auth_headers(endpoint)
        if extra_headers:
            headers.update(extra_headers)
        if fresh:
            headers["Cache-Control"] = "no-cache"
        headers["User-Agent"] = self._settings.user_agent
        self._check_maintenance(endpoint)
        read = (
            timeout
            if timeout is not None
            else self._settings.timeouts.read_for(endpoint.timeout_class)
        )
        wait = self._settings.max_wait if max_wait is USE_DEFAULT else max_wait
        request = self._http.build_request(
            "GET",
            self._settings.base_url + path,
            params=params,
            headers=headers,
            timeout=httpx.Timeout(read, connect=self._settings.timeouts.connect),
        )
        policy = self._settings.retry if retry is USE_DEFAULT else retry

        async def attempts() -> Response[Any]:
            return await self._attempts(endpoint, request, wait, policy)

        if not (self._settings.coalesce if coalesce is None else coalesce):
            return await attempts()
        # Identical URL (path, parameters, traceability), token and cache directive.
        key = (self._auth.fingerprint, str(request.url), headers.get("Cache-Control"))
        response, _shared = await self._coalescer.run(key, attempts)
        return response

    async def _attempts(
        self,
        endpoint: Endpoint,
        request: httpx.Request,
        max_wait: float | None,
        policy: RetryPolicy | None,
    ) -> Response[Any]:
        """Send once, or as the retry policy allows, each attempt through the governor."""
        history: list[Attempt] = []
        started = anyio.current_time()
        deadline = None if policy is None or policy.deadline is None else started + policy.deadline
        number = 0
        while True:
            number += 1
            wait = max_wait
            if deadline is not None:
                left = deadline - anyio.current_time()
                wait = left if wait is None else min(wait, left)
            try:
                with anyio.fail_after(
                    None if deadline is None else max(0.0, deadline - anyio.current_time())
                ):
                    return await self._send(endpoint, request, wait)
            except TimeoutError:
                error: ApiEntrepriseError = TransportError(
                    f"call deadline of {policy.deadline if policy else 0:.1f} s exceeded",
                    url=str(request.url),
                    operation_id=endpoint.operation_id or None,
                )
            except ApiEntrepriseError as exc:
                error = exc
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
                if deadline is not None and anyio.current_time() + pause >= deadline:
                    give_up = True
                    pause = 0.0
            history.append(Attempt(number, describe(error), pause))
            if give_up:
                annotate(error, history)
                raise error
            logger.info(
                "attempt %d of %s failed (%s); retrying in %.2f s",
                number,
                endpoint.operation_id or request.url.path,
                describe(error),
                pause,
                extra={"attempt": number, "retry_in": pause, "error": describe(error)},
            )
            await anyio.sleep(pause)

    def _auth_headers(self, endpoint: Endpoint) -> dict[str, str]:
        info = self._auth.token_info
        if info is not None and info.is_expired():
            raise TokenExpiredError(
                f"the token {self._auth.fingerprint[:8]}... expired on "
                f"{info.expires_at:%Y-%m-%d}; it was not sent"
            )
        try:
            return dict(self._auth.auth_headers())
        except Exception as exc:
            raise AuthenticationError(
                f"the auth strategy failed: {type(exc).__name__}",
                operation_id=endpoint.operation_id or None,
            ) from exc

    def _check_maintenance(self, endpoint: Endpoint) -> None:
        if not self._settings.check_maintenance or endpoint.maintenance is None:
            return
        left = maintenance_remaining(endpoint.maintenance, dt.datetime.now(dt.UTC))
        if left is not None:
            raise MaintenanceWindowError(endpoint.operation_id, left)

    async def _send(
        self, endpoint: Endpoint, request: httpx.Request, max_wait: float | None
    ) -> Response[Any]:
        url = str(request.url)
        op_id = endpoint.operation_id or None
        circuit = self._circuit
        if circuit is None:
            return await self._exchange(endpoint, request, max_wait, url, op_id)
        probe = circuit.before_call()
        try:
            response = await self._exchange(endpoint, request, max_wait, url, op_id)
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
    ) -> Response[Any]:
        async with self._governor.permit(
            self._auth.fingerprint, endpoint, max_wait=max_wait
        ) as permit:
            started = anyio.current_time()
            permit.sending()
            try:
                answer = await self._http.send(request)
            except httpx.PoolTimeout as exc:
                # Local congestion (no free connection), not silence from the server.
                raise TransportError(
                    "no free connection in the pool", url=url, operation_id=op_id
                ) from exc
            except httpx.TimeoutException as exc:
                self._log(request, None, started, None)
                raise _Silence(
                    f"timed out: {type(exc).__name__} on {request.url.path}",
                    url=url,
                    operation_id=op_id,
                ) from exc
            except httpx.HTTPError as exc:
                self._log(request, None, started, None)
                raise _Silence(
                    f"no answer: {type(exc).__name__} on {request.url.path}",
                    url=url,
                    operation_id=op_id,
                ) from exc
            permit.observe(answer.status_code, answer.headers)
        request_id = answer.headers.get("x-request-id")
        rate_limit = parse_rate_limit(answer.headers)
        self._log(request, answer, started, request_id)
        try:
            body = answer.json() if answer.content else None
        except ValueError:
            body = None
            if answer.is_success:
                raise TransportError(
                    f"HTTP {answer.status_code} with a body that is not JSON",
                    url=url,
                    operation_id=op_id,
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
            raise TransportError(
                f"HTTP {answer.status_code} with a JSON body that is not an object",
                url=url,
                operation_id=op_id,
            )
        return self._envelope(endpoint, body, answer, rate_limit, request_id)

    def _envelope(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        answer: httpx.Response,
        rate_limit: Any,
        request_id: str | None,
    ) -> Response[Any]:
        links = body.get("links")
        meta = body.get("meta")
        data = self._structure(endpoint, body.get("data"))
        return Response(
            data=data,
            links=links if isinstance(links, dict) else {},
            meta=meta if isinstance(meta, dict) else {},
            raw=body,
            http_status=answer.status_code,
            headers=answer.headers,
            rate_limit=rate_limit,
            request_id=request_id,
            operation_id=endpoint.operation_id or None,
        )

    def _structure(self, endpoint: Endpoint, data: Any) -> Any:
        """Turn ``data`` into the operation's record type (raw JSON when it has none)."""
        return data

    def _log(
        self,
        request: httpx.Request,
        answer: httpx.Response | None,
        started: float,
        request_id: str | None,
    ) -> None:
        if not logger.isEnabledFor(logging.DEBUG):
            return
        duration_ms = round((anyio.current_time() - started) * 1000, 1)
        status = answer.status_code if answer is not None else None
        remaining = answer.headers.get("ratelimit-remaining") if answer is not None else None
        query = request.url.query.decode("ascii", "replace")
        logger.debug(
            "GET %s -> %s in %.1f ms",
            request.url.path,
            status if status is not None else "no answer",
            duration_ms,
            extra={
                "method": request.method,
                "path": request.url.path,
                "query": query,
                "http_status": status,
                "duration_ms": duration_ms,
                "rate_limit_remaining": remaining,
                "request_id": request_id,
            },
        )
