"""Every exception the library raises.

::

    ApiEntrepriseError
    ├── InvalidParameterError (also ValueError)   refused locally, nothing sent
    │   ├── MissingParameterError
    │   ├── InvalidSirenError
    │   ├── InvalidSiretError
    │   └── InvalidIdentifierError                RNA, EORI, year, month
    ├── UnknownOperationError (also KeyError)
    ├── MaintenanceWindowError                    refused locally during maintenance
    ├── TokenExpiredError                         refused locally, token past its expiry
    ├── ApiError                                  the server answered with an error
    │   ├── ClientError                           4xx
    │   │   ├── AuthenticationError               401 (00101, 00103, 00105)
    │   │   ├── AuthorizationError                403
    │   │   ├── NotFoundError                     404
    │   │   ├── ConflictError                     409
    │   │   ├── ValidationError                   422
    │   │   ├── RateLimitError                    429, or refused locally by the governor
    │   │   └── UnavailableForLegalReasonsError   451
    │   └── ServerError                           5xx
    │       ├── ProviderError                     502
    │       └── ProviderUnavailableError          503, 504
    ├── TransportError                            no usable answer (timeout, DNS, TLS, reset)
    │   └── ServiceUnreachable                    circuit open after repeated silence
    └── UnexpectedPayloadError                    a 2xx body we cannot read as promised
        └── UnfitFieldError (also AttributeError) reading a record field whose value misfit

``ApiError`` and ``TransportError`` carry the request's method and URL (the
URL never holds the token: it travels in a header).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ._response import RateLimit

if TYPE_CHECKING:
    from ._response import Response

__all__ = [
    "ApiEntrepriseError",
    "ApiError",
    "AuthenticationError",
    "AuthorizationError",
    "ClientError",
    "ConflictError",
    "ErrorItem",
    "InvalidIdentifierError",
    "InvalidParameterError",
    "InvalidSirenError",
    "InvalidSiretError",
    "MaintenanceWindowError",
    "MissingParameterError",
    "NotFoundError",
    "ProviderError",
    "ProviderUnavailableError",
    "RateLimitError",
    "ServerError",
    "ServiceUnreachable",
    "TokenExpiredError",
    "TransportError",
    "UnavailableForLegalReasonsError",
    "UnexpectedPayloadError",
    "UnfitFieldError",
    "UnknownOperationError",
    "ValidationError",
    "error_from_response",
]


@attrs.frozen
class ErrorItem:
    """One item of a JSON:API ``errors`` array."""

    code: str | None = None
    title: str | None = None
    detail: str | None = None
    source: Mapping[str, Any] | None = None
    meta: Mapping[str, Any] = attrs.field(factory=dict)

    @classmethod
    def from_raw(cls, raw: Any) -> ErrorItem:
        """Build an item from whatever the server sent, tolerating odd shapes."""
        if not isinstance(raw, Mapping):
            return cls(detail=str(raw))
        source = raw.get("source")
        meta = raw.get("meta")
        code = raw.get("code")
        return cls(
            code=None if code is None else str(code),
            title=_opt_str(raw.get("title")),
            detail=_opt_str(raw.get("detail")),
            source=source if isinstance(source, Mapping) else None,
            meta=meta if isinstance(meta, Mapping) else {},
        )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


class ApiEntrepriseError(Exception):
    """Root of every exception raised by this library."""

    #: Failed attempts of a retried call, oldest first (empty when it was not retried).
    attempts: tuple[Any, ...] = ()


class InvalidParameterError(ApiEntrepriseError, ValueError):
    """A parameter was refused locally; no request was sent.

    Attributes:
        parameter: the name of the offending parameter.
    """

    def __init__(self, parameter: str, message: str) -> None:
        self.parameter = parameter
        super().__init__(f"{parameter}: {message}")


class MissingParameterError(InvalidParameterError):
    """A required parameter (often ``recipient``, ``context`` or ``object``) is missing."""

    def __init__(self, parameter: str) -> None:
        super().__init__(parameter, "is required and was not given (nor set on the client)")


class InvalidSirenError(InvalidParameterError):
    """A SIREN is not 9 digits with a valid Luhn checksum."""


class InvalidSiretError(InvalidParameterError):
    """A SIRET is not 14 digits with a valid checksum (Luhn, or La Poste's rule)."""


class InvalidIdentifierError(InvalidParameterError):
    """An RNA, EORI, year, month or other identifier is malformed."""


class UnknownOperationError(ApiEntrepriseError, KeyError):
    """No operation of the catalogue has this id."""

    def __init__(self, operation_id: str) -> None:
        self.operation_id = operation_id
        super().__init__(f"unknown operation id {operation_id!r}")

    def __str__(self) -> str:
        return str(self.args[0])


class MaintenanceWindowError(ApiEntrepriseError):
    """The operation is in its daily maintenance window; nothing was sent."""

    def __init__(self, operation_id: str, ends_in: float) -> None:
        self.operation_id = operation_id
        self.ends_in = ends_in
        super().__init__(f"{operation_id} is in its maintenance window for another {ends_in:.0f} s")


class TokenExpiredError(ApiEntrepriseError):
    """The token's ``exp`` claim is in the past; it was not sent."""


class ApiError(ApiEntrepriseError):
    """The server answered, with an error status.

    Attributes:
        http_status: the HTTP status (``None`` when refused locally).
        errors: the raw JSON:API ``errors`` list.
        items: the same list as typed :class:`ErrorItem` records.
        method, url: the request sent (the URL never contains the token).
        operation_id: the catalogue operation, when known.
        rate_limit: parsed ``RateLimit-*`` headers of the answer.
        request_id: the server's ``X-Request-ID``, when sent.
        headers: the answer's headers.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        http_status: int | None = None,
        errors: Sequence[Any] = (),
        method: str = "GET",
        url: str = "",
        operation_id: str | None = None,
        rate_limit: RateLimit | None = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.http_status = http_status
        self.errors: list[Any] = list(errors)
        self.items = tuple(ErrorItem.from_raw(e) for e in self.errors)
        self.method = method
        self.url = url
        self.operation_id = operation_id
        self.rate_limit = rate_limit
        self.request_id = request_id
        self.headers: Mapping[str, str] = headers or {}
        if message is None:
            where = operation_id or url.split("?", 1)[0]
            message = _message(http_status, self._first, where)
        super().__init__(message)

    @property
    def _first(self) -> ErrorItem | None:
        return self.items[0] if self.items else None

    @property
    def first_error_code(self) -> str | None:
        """Code of the first error item (e.g. ``"00101"``)."""
        return self._first.code if self._first else None

    @property
    def first_error_title(self) -> str | None:
        """Title of the first error item."""
        return self._first.title if self._first else None

    @property
    def first_error_detail(self) -> str | None:
        """Detail of the first error item."""
        return self._first.detail if self._first else None

    @property
    def first_error_source(self) -> Mapping[str, Any] | None:
        """Source of the first error item (``{"parameter": ...}``)."""
        return self._first.source if self._first else None

    @property
    def first_error_meta(self) -> Mapping[str, Any]:
        """Meta of the first error item (``provider``, ``retry_in``)."""
        return self._first.meta if self._first else {}

    @property
    def codes(self) -> tuple[str, ...]:
        """Every error code of the answer."""
        return tuple(i.code for i in self.items if i.code)

    @property
    def provider(self) -> str | None:
        """The upstream data provider blamed by the server, if any."""
        for item in self.items:
            provider = item.meta.get("provider")
            if provider is not None:
                return str(provider)
        return None

    @property
    def retry_in(self) -> float | None:
        """``meta.retry_in`` in seconds, when the server gave one (capped like ``Retry-After``)."""
        for item in self.items:
            value = _number(item.meta.get("retry_in"))
            if value is not None:
                return capped_wait(value)
        return None


class ClientError(ApiError):
    """A 4xx answer."""


class AuthenticationError(ClientError):
    """401: the token is invalid (00101), expired (00103) or blacklisted (00105).

    Also raised without any request when the auth strategy itself fails.
    """

    @property
    def reason(self) -> str:
        """``invalid``, ``expired``, ``blacklisted`` or ``unknown``."""
        return {"00101": "invalid", "00103": "expired", "00105": "blacklisted"}.get(
            self.first_error_code or "", "unknown"
        )


class AuthorizationError(ClientError):
    """403: the token may not use this endpoint."""


class NotFoundError(ClientError):
    """404: the entity is unknown to the provider."""


class ConflictError(ClientError):
    """409: an identical request is still being processed by the server."""


class ValidationError(ClientError):
    """422: the server refused a parameter."""


class UnavailableForLegalReasonsError(ClientError):
    """451: the entity is not diffusible."""


class RateLimitError(ClientError):
    """429 from the server, or a local refusal by the governor (``local`` true).

    Attributes:
        retry_after: seconds to wait before calling again, ``None`` when unknown.
        local: true when the governor refused the call without sending it.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        local: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.local = local


class ServerError(ApiError):
    """A 5xx answer."""


class ProviderError(ServerError):
    """502: the upstream provider failed.

    Attributes:
        retry_after: seconds the server suggests waiting (``meta.retry_in``, as the
            reference client names it), ``None`` when it gave none.
    """

    def __init__(
        self, message: str | None = None, *, retry_after: float | None = None, **kw: Any
    ) -> None:
        super().__init__(message, **kw)
        self.retry_after = self.retry_in if retry_after is None else retry_after


class ProviderUnavailableError(ServerError):
    """503 or 504: the upstream provider is down or too slow."""


class TransportError(ApiEntrepriseError):
    """No usable answer: timeout, DNS, TLS, dropped connection, or a body that is not JSON."""

    def __init__(
        self,
        message: str,
        *,
        method: str = "GET",
        url: str = "",
        operation_id: str | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.operation_id = operation_id
        self.http_status: int | None = None
        self.errors: list[Any] = []
        super().__init__(message)


class _Oversized(TransportError):
    """The answer is larger than the size limit: sending it again would not help."""


class ServiceUnreachable(TransportError):
    """The circuit is open: the server stopped answering (possibly a ban)."""


class UnexpectedPayloadError(ApiEntrepriseError):
    """A successful answer we cannot read as promised.

    Raised for a body that is not JSON, a downloaded document whose content
    type is not one we accept, and (only with ``strict=True``) a JSON body
    that does not fit the operation's record. By default such a body is
    returned anyway, with :attr:`Response.problems` saying what did not fit.

    Attributes:
        problems: one line per offending value, naming its JSON path
            (``expected a string, got int 3 @ $.data.siren``).
        operation_id: the catalogue operation, when known.
        url: the request sent.
        response: what was received: the whole :class:`Response` (raw body,
            status, headers, rate limit, request id; ``data`` is the lenient
            record when the body was JSON, else ``None``). ``None`` only when
            the error is about a value read later, not about an answer.
        http_status, request_id, headers, rate_limit: the same, from ``response``
            (``http_status`` is ``None`` when the body is not a JSON object: that
            error is also a :class:`TransportError`, as the DINUM specification asks).

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 ``response``: what was received travels with the error.
    """

    def __init__(
        self,
        message: str,
        *,
        problems: Sequence[str] = (),
        operation_id: str | None = None,
        url: str = "",
        response: Response[Any] | None = None,
    ) -> None:
        # First: in _NotAnEnvelope the next class is TransportError, which sets defaults.
        super().__init__(message)
        self.problems = tuple(problems)
        self.operation_id = operation_id
        self.url = url
        self.response = response
        self.http_status: int | None = None if response is None else response.http_status
        self.request_id: str | None = None if response is None else response.request_id
        self.headers: Mapping[str, str] = {} if response is None else response.headers
        self.rate_limit: RateLimit | None = None if response is None else response.rate_limit


class _NotAnEnvelope(UnexpectedPayloadError, TransportError):
    """A 2xx whose body is not a JSON object: no usable answer, yet what came is kept.

    A :class:`TransportError` as the DINUM specification asks (``http_status``
    is ``None``), and an :class:`UnexpectedPayloadError` whose ``response``
    holds the body as received (text when not JSON), the real status and headers.
    """

    def __init__(
        self, message: str, *, url: str, operation_id: str | None, response: Response[Any]
    ) -> None:
        UnexpectedPayloadError.__init__(
            self,
            message,
            problems=("the body is not a JSON object @ $",),
            operation_id=operation_id,
            url=url,
            response=response,
        )
        self.method = "GET"
        self.errors: list[Any] = []
        self.http_status = None  # no usable answer; the status is in .response


class UnfitFieldError(UnexpectedPayloadError, AttributeError):
    """Reading a record field whose value did not fit its documented type.

    A lenient record keeps such a value in ``record.unfit`` instead of
    passing it off as the annotated type. Being an ``AttributeError``,
    ``getattr(record, name, default)`` and ``hasattr`` treat the field as
    missing.

    Attributes:
        field: the attribute read.
        value: the value as the server sent it (``None`` for null or absent).

    .. versionadded:: 0.2.0
    """

    def __init__(self, message: str, *, field: str, value: Any, obj: Any = None) -> None:
        super().__init__(message, problems=(message,))
        self.field = field
        self.value = value
        # AttributeError's own attributes, so that tools reading them (IDEs, suggestions) work.
        self.name = field
        self.obj = obj


_BY_STATUS: dict[int, type[ApiError]] = {
    401: AuthenticationError,
    403: AuthorizationError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
    429: RateLimitError,
    451: UnavailableForLegalReasonsError,
    502: ProviderError,
    503: ProviderUnavailableError,
    504: ProviderUnavailableError,
}


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _message(status: int | None, first: ErrorItem | None, where: str) -> str:
    """``HTTP 404 from <where>: <code> <title> (<detail>)``, with whatever is known."""
    label = " ".join(part for part in (first.code, first.title) if part) if first else ""
    head = "HTTP error" if status is None else f"HTTP {status}"
    message = f"{head} from {where or 'the API'}: {label or 'no error details'}"
    if first and first.detail:
        message += f" ({first.detail})"
    return message


class _Reset(Protocol):
    @property
    def reset_epoch(self) -> float | None: ...


#: The longest wait a server's hint may impose, in seconds: a garbled or hostile
#: ``Retry-After`` must not stop the governor, a retry or a browser for days.
MAX_RETRY_AFTER = 3600.0


def capped_wait(seconds: float) -> float:
    """``seconds`` brought within ``[0, MAX_RETRY_AFTER]`` (the one cap every hint goes through)."""
    if not math.isfinite(seconds):
        return MAX_RETRY_AFTER if seconds > 0 else 0.0
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` value asks for: delta-seconds or an HTTP date.

    ``now`` is the wall-clock epoch (for dates). The result is capped by
    :func:`capped_wait`; ``None`` when the value is absent or unreadable.
    """
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 64 or not text.isascii():
        return None
    number = _number(text)
    if number is not None:
        return capped_wait(number)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": a date whose zone is unknown; read it as UTC
        when = when.replace(tzinfo=dt.UTC)
    try:
        return capped_wait(when.timestamp() - now)
    except (OverflowError, OSError, ValueError):
        return None


def retry_after_seconds(
    headers: Mapping[str, str], rate_limit: _Reset | None, retry_in: float | None, now: float
) -> float | None:
    """Seconds to wait after a 429: ``Retry-After``, else ``RateLimit-Reset``, else ``retry_in``.

    ``now`` is the wall-clock epoch; ``RateLimit-Reset`` alone is enough. Within
    ``[0, MAX_RETRY_AFTER]`` (a reset already past gives 0); ``None`` when nothing tells.
    """
    header = parse_retry_after(headers.get("retry-after"), now)
    if header is not None:
        return header
    reset = None if rate_limit is None else rate_limit.reset_epoch
    if reset is not None:
        return capped_wait(reset - now)
    if retry_in is not None:
        return capped_wait(retry_in)
    return None


def error_from_response(
    status: int,
    body: Any,
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    operation_id: str | None,
    rate_limit: RateLimit | None,
    request_id: str | None,
    now: float,
) -> ApiError:
    """Map an error answer to its exception (the status decides, the code informs)."""
    errors = body.get("errors") if isinstance(body, Mapping) else None
    if not isinstance(errors, list):
        errors = []
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ClientError if 400 <= status < 500 else ServerError
    common: dict[str, Any] = {
        "http_status": status,
        "errors": errors,
        "method": method,
        "url": url,
        "operation_id": operation_id,
        "rate_limit": rate_limit,
        "request_id": request_id,
        "headers": headers,
    }
    if cls is RateLimitError:
        error = RateLimitError(**common)
        error.retry_after = retry_after_seconds(headers, rate_limit, error.retry_in, now)
        return error
    return cls(**common)
