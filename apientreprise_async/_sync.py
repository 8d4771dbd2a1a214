"""``Client``: the synchronous face of :class:`AsyncClient`, for threads and plain scripts.

Not a second implementation: a :class:`Client` owns an :class:`AsyncClient`
and runs its coroutines on one event loop in a daemon thread, through an
anyio :class:`~anyio.from_thread.BlockingPortal`. Any number of threads may
call it at once; their calls run side by side on that loop, so one Client
per process (a Django setting, a Celery worker global) shares one connection
pool, and every call goes through the process-wide governor like any other.

Why a daemon thread of our own rather than ``anyio.from_thread.start_blocking_portal``:
that one runs in a pool thread that the interpreter joins at exit, so a
Client nobody closed (a module-level global) would hang the process on exit.

The loop starts on the first call, not in the constructor, so that a Client
built at import time survives ``fork()`` (gunicorn's ``--preload``, Celery's
prefork pool): a child process gets a loop of its own, and a fresh connection
pool if the parent had used the Client.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import pathlib
import threading
from collections.abc import Callable, Collection, Coroutine, Mapping
from types import TracebackType
from typing import Any, TypeVar

import anyio
import httpx
from anyio.from_thread import BlockingPortal

from ._auth import AuthStrategy, TokenInfo
from ._catalogue import Endpoint
from ._circuit import CircuitPolicy
from ._client import DOCUMENT_CONTENT_TYPES, AsyncClient
from ._config import USE_DEFAULT, Settings, SizeLimits, Timeouts, UseDefault
from ._gen_sync_resources import SyncResources
from ._governor import Governor, Limits
from ._response import Response
from ._retry import RetryPolicy
from ._telemetry import Stats
from .audit import AuditErrors, AuditSink
from .records.api_entreprise import Privileges

__all__ = ["Client"]

_T = TypeVar("_T")


class _Loop:
    """An event loop on a daemon thread, and the portal into it; one per process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        started: concurrent.futures.Future[BlockingPortal] = concurrent.futures.Future()

        async def serve() -> None:
            async with BlockingPortal() as portal:
                started.set_result(portal)
                await portal.sleep_until_stopped()

        def run() -> None:
            try:
                anyio.run(serve)
            except BaseException as exc:  # reported to the thread waiting for the start
                if not started.done():
                    started.set_exception(exc)
                raise

        self.thread = threading.Thread(target=run, name="apientreprise-client", daemon=True)
        self.thread.start()
        self.portal = started.result()

    def stop(self) -> None:
        """Let the calls in progress finish, then end the loop and its thread."""
        with contextlib.suppress(RuntimeError):  # already stopped
            self.portal.call(self.portal.stop)
        if self.thread is not threading.current_thread():
            self.thread.join()


class Client(SyncResources):
    """Synchronous client for API Entreprise, safe to share between threads.

    It takes the same arguments as :class:`AsyncClient` and offers the same
    calls, blocking: typed methods (``client.insee.unites_legales(...)``),
    :meth:`call`, :meth:`get`, :meth:`download`, :meth:`privileges`, with the
    same records, :class:`Response`, errors and audit trail. Build one per
    process and share it; use it as a context manager or call :meth:`close`
    (a Client never closed does not keep the process alive at exit).

    ::

        client = Client(token, recipient="13002526500013", context="...", object="...")
        response = client.insee.unites_legales("418166096")

    Calls run on an event loop of the Client's own, in a background thread,
    and are admitted by the process-wide governor (or the ``governor`` given),
    which every thread and every other client of the process shares. Inside
    ``async`` code, use :class:`AsyncClient`: a blocking call would stall the
    caller's event loop meanwhile.

    .. versionadded:: 0.1.0
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
        options: dict[str, Any] = {
            "auth": auth,
            "recipient": recipient,
            "context": context,
            "object": object,
            "environment": environment,
            "base_url": base_url,
            "timeouts": timeouts,
            "sizes": sizes,
            "governor": governor,
            "max_wait": max_wait,
            "transport": transport,
            "http_client": http_client,
            "verify": verify,
            "user_agent": user_agent,
            "check_maintenance": check_maintenance,
            "retry_rate_limited": retry_rate_limited,
            "retry": retry,
            "circuit": circuit,
            "coalesce": coalesce,
            "audit": audit,
            "audit_errors": audit_errors,
            "user": user,
            "case": case,
            "strict": strict,
        }
        # Built now, so that bad settings fail here; its pool opens on the loop later.
        asynchronous = AsyncClient(token, limits=limits, **options)
        if limits is not None:
            # A private governor is part of the client: a rebuild after fork keeps it.
            options["governor"] = asynchronous.governor
        self._rebuild: Callable[[], AsyncClient] = lambda: AsyncClient(token, **options)
        self._setup(asynchronous, None)

    def _setup(self, asynchronous: AsyncClient, parent: Client | None) -> None:
        self._async = asynchronous
        self._parent = parent
        self._lock = threading.Lock()
        self._loop: _Loop | None = None if parent is None else parent._loop
        self._used_in = 0  # the process whose loop the pool has been used on
        self._closed = False
        self._init_resources()

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> Client:
        if self._closed:
            raise RuntimeError("this Client is closed; create a new one")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool and stop the background loop (idempotent).

        Calls still running in other threads finish first. A client made by
        :meth:`with_options` shares its parent's pool and loop: closing it
        leaves them to the parent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop = self._loop
        if self._parent is not None:
            return
        if loop is not None and loop.pid == os.getpid():
            try:
                loop.portal.call(self._async.aclose)
            finally:
                loop.stop()
        else:
            # Never used here: nothing to wait for, but the pool still gets closed.
            _run_aside(self._async.aclose)

    def __del__(self) -> None:
        # A forgotten client must not leave its loop thread behind.
        loop = getattr(self, "_loop", None)
        if (
            loop is not None
            and getattr(self, "_parent", True) is None
            and not self._closed
            and loop.pid == os.getpid()
        ):
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.portal.start_task_soon(loop.portal.stop)

    def _portal(self) -> BlockingPortal:
        """The portal into the loop, started on first use (again in a forked child)."""
        loop = self._loop
        if loop is not None and loop.pid == os.getpid() and not self._closed:
            return loop.portal
        with self._lock:
            if self._closed:
                raise RuntimeError("this Client is closed")
            if self._parent is not None:
                parent_portal = self._parent._portal()
                self._loop = self._parent._loop
                if self._used_in not in (0, os.getpid()):
                    self._async = self._parent._async.with_options()
                self._used_in = os.getpid()
                return parent_portal
            loop = self._loop
            if loop is None or loop.pid != os.getpid():
                if self._used_in not in (0, os.getpid()):
                    # Forked after use: the inherited pool's connections belong to the parent.
                    self._async = self._rebuild()
                loop = self._loop = _Loop()
            self._used_in = os.getpid()
            return loop.portal

    def _run(self, func: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        result: _T = self._portal().call(func)
        return result

    # -- settings ------------------------------------------------------------------

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
    ) -> Client:
        """A new client with some settings changed, sharing this one's pool, loop and governor.

        See :meth:`AsyncClient.with_options`; close the original when done.
        """
        changed = self._async.with_options(
            token=token,
            auth=auth,
            environment=environment,
            base_url=base_url,
            user_agent=user_agent,
            recipient=recipient,
            context=context,
            object=object,
            timeouts=timeouts,
            max_wait=max_wait,
            check_maintenance=check_maintenance,
            retry_rate_limited=retry_rate_limited,
            retry=retry,
            coalesce=coalesce,
            user=user,
            case=case,
            strict=strict,
        )
        copy = Client.__new__(Client)
        copy._setup(changed, self)
        return copy

    @property
    def settings(self) -> Settings:
        """The resolved settings (see :attr:`AsyncClient.settings`)."""
        return self._async.settings

    @property
    def governor(self) -> Governor:
        """The governor admitting this client's calls."""
        return self._async.governor

    def stats(self) -> Stats:
        """Counters of this client and its ``with_options`` copies, with the governor's view."""
        return self._async.stats()

    @property
    def token_fingerprint(self) -> str:
        """A short keyed digest naming the token in logs and metrics (never the token)."""
        return self._async.token_fingerprint

    @property
    def token_info(self) -> TokenInfo | None:
        """What the JWT says about itself (expiry, scopes), read without a request."""
        return self._async.token_info

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._loop else "idle"
        return f"<Client of {self._async!r} {state}>"

    # -- calls ---------------------------------------------------------------------

    def call(
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
        """Call a catalogue operation by its ``x-operationId`` (see :meth:`AsyncClient.call`)."""
        return self._run(
            functools.partial(
                self._async.call,
                operation_id,
                recipient=recipient,
                context=context,
                object=object,
                fresh=fresh,
                timeout=timeout,
                max_wait=max_wait,
                retry=retry,
                coalesce=coalesce,
                user=user,
                case=case,
                strict=strict,
                **params,
            )
        )

    def get(
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
        """Low-level GET of any path (see :meth:`AsyncClient.get`)."""
        return self._run(
            functools.partial(
                self._async.get,
                path,
                params=params,
                headers=headers,
                timeout=timeout,
                max_wait=max_wait,
                retry=retry,
                coalesce=coalesce,
                user=user,
                case=case,
            )
        )

    def privileges(
        self, *, timeout: float | None = None, max_wait: float | UseDefault | None = USE_DEFAULT
    ) -> Response[Privileges]:
        """The privileges the server grants this token (see :meth:`AsyncClient.privileges`)."""
        return self._run(
            functools.partial(self._async.privileges, timeout=timeout, max_wait=max_wait)
        )

    def download(
        self,
        document_url: str,
        destination: str | os.PathLike[str],
        *,
        content_types: Collection[str] | None = DOCUMENT_CONTENT_TYPES,
        timeout: float | None = None,
        max_wait: float | UseDefault | None = USE_DEFAULT,
        max_size: int | None = None,
    ) -> pathlib.Path:
        """Stream a document to a file, never partial (see :meth:`AsyncClient.download`)."""
        return self._run(
            functools.partial(
                self._async.download,
                document_url,
                destination,
                content_types=content_types,
                timeout=timeout,
                max_wait=max_wait,
                max_size=max_size,
            )
        )

    def _request(
        self,
        endpoint: Endpoint,
        path_values: Mapping[str, Any],
        query: Mapping[str, Any],
        *,
        recipient: str | None = None,
        context: str | None = None,
        object_: str | None = None,
        fresh: bool = False,
        timeout: float | None = None,
        max_wait: float | UseDefault | None = USE_DEFAULT,
        strict: bool | None = None,
    ) -> Response[Any]:
        """What the typed methods call: :meth:`AsyncClient._request`, on the loop."""
        return self._run(
            functools.partial(
                self._async._request,
                endpoint,
                path_values,
                query,
                recipient=recipient,
                context=context,
                object_=object_,
                fresh=fresh,
                timeout=timeout,
                max_wait=max_wait,
                strict=strict,
            )
        )


def _run_aside(func: Callable[[], Coroutine[Any, Any, object]]) -> None:
    """Run ``func`` on a throwaway loop in a thread (the caller may be inside a loop)."""
    thread = threading.Thread(target=anyio.run, args=(func,), name="apientreprise-close")
    thread.start()
    thread.join()
