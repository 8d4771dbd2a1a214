"""Authentication strategies (the seam the DINUM spec asks for) and token introspection."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Protocol, runtime_checkable

import attrs

from ._errors import AuthenticationError, InvalidParameterError

__all__ = ["AuthStrategy", "BearerToken", "Credentials", "TokenInfo", "check_token", "fingerprint"]

_logger = logging.getLogger("apientreprise_async")

# A fixed key: fingerprints must agree across processes sharing a Redis governor,
# and the point is only that the token itself never appears in keys or logs.
_DEFAULT_KEY = b"apientreprise_async/token-fingerprint/v1"


def fingerprint(secret: str, key: bytes = _DEFAULT_KEY) -> str:
    """A short keyed hash naming a token without revealing it."""
    return hmac.new(key, secret.encode("utf-8"), hashlib.sha256).hexdigest()[:20]


@runtime_checkable
class AuthStrategy(Protocol):
    """What the transport asks for on every request.

    A strategy may raise; the client turns that into an
    :class:`~apientreprise_async.AuthenticationError` without sending anything.
    """

    def auth_headers(self) -> Mapping[str, str]:
        """Headers that authenticate one request."""
        ...

    @property
    def fingerprint(self) -> str:
        """A stable, non-reversible name of the credential, for rate buckets and logs."""
        ...

    @property
    def token_info(self) -> TokenInfo | None:
        """What the credential says about itself, when it can tell."""
        ...


@attrs.frozen
class TokenInfo:
    """Claims read from the token's JWT payload (not verified: that is the server's job)."""

    subject: str | None
    expires_at: dt.datetime | None
    issued_at: dt.datetime | None
    token_id: str | None
    scopes: tuple[str, ...]
    claims: Mapping[str, Any] = attrs.field(repr=False)

    def expires_in(self, now: dt.datetime | None = None) -> dt.timedelta | None:
        """Time left before expiry, negative once expired, ``None`` if unknown."""
        if self.expires_at is None:
            return None
        return self.expires_at - (now or dt.datetime.now(dt.UTC))

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        """Whether the token is past its ``exp`` claim."""
        left = self.expires_in(now)
        return left is not None and left.total_seconds() <= 0

    @classmethod
    def from_jwt(cls, token: str) -> TokenInfo | None:
        """Decode a JWT payload without checking its signature; ``None`` if not a JWT."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        try:
            claims = json.loads(base64.urlsafe_b64decode(payload))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return None
        if not isinstance(claims, dict):
            return None
        scopes_raw = claims.get("scopes") or claims.get("scope") or ()
        if isinstance(scopes_raw, str):
            scopes_raw = scopes_raw.split()
        scopes = tuple(str(s) for s in scopes_raw) if isinstance(scopes_raw, list | tuple) else ()
        subject = claims.get("sub")
        jti = claims.get("jti") or claims.get("uid")
        return cls(
            subject=None if subject is None else str(subject),
            expires_at=_epoch(claims.get("exp")),
            issued_at=_epoch(claims.get("iat")),
            token_id=None if jti is None else str(jti),
            scopes=scopes,
            claims=claims,
        )


def _epoch(value: Any) -> dt.datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return dt.datetime.fromtimestamp(value, tz=dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


# Visible ASCII only (RFC 9110 token68 and JWTs are narrower still): anything else
# either breaks the HTTP layer, whose error then quotes the header, or is a paste accident.
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
# Header values of a strategy may hold spaces ("Bearer x"), never controls or non-ASCII.
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_warned_shape: set[str] = set()


def _first_bad(text: str) -> tuple[int, str] | None:
    """Position and description of the first character that is not visible ASCII."""
    for index, char in enumerate(text):
        code = ord(char)
        if not 0x21 <= code <= 0x7E:
            if code == 0xFEFF:
                what = "a byte order mark"
            elif code < 0x20 or code == 0x7F:
                what = f"a control character (U+{code:04X})"
            elif char.isspace():
                what = "a space"
            else:
                what = "a non-ASCII character"
            return index, what
    return None


def check_token(token: object) -> str:
    """Return ``token`` without surrounding whitespace, or raise without quoting it.

    A token is visible ASCII (``!`` to ``~``). One that does not look like a
    JWT (three base64url parts) is accepted with a warning in the log, once.

    Raises:
        InvalidParameterError: ``token`` is not a string, is empty or holds
            another character (the message names its position, never the token).
    """
    if not isinstance(token, str):
        raise InvalidParameterError(
            "token", f"must be a string, not {type(token).__name__} (its value is not shown)"
        )
    text = token.strip()
    if not text:
        raise InvalidParameterError("token", "is empty")
    if _VISIBLE_ASCII.fullmatch(text) is None:
        bad = _first_bad(text)
        assert bad is not None
        index, what = bad
        del text, token  # out of this frame before the error is seen (frame-local captures)
        raise InvalidParameterError(
            "token",
            f"holds {what} at position {index}; a token is visible ASCII only "
            "(was it copied whole, from the dashboard?). Its value is not shown",
        )
    if _JWT_SHAPE.fullmatch(text) is None:
        name = fingerprint(text)
        if name not in _warned_shape:
            _warned_shape.add(name)
            _logger.warning(
                "the token %s... does not look like a JWT (three base64url parts separated "
                "by dots); API Entreprise tokens are JWTs: check it was copied whole",
                name[:8],
                extra={"token_fingerprint": name[:8]},
            )
    return text


class Credentials:
    """Authentication headers of one request, masked in ``repr`` and in frame captures.

    Not a mapping on purpose: error reporters (Sentry, ``rich`` tracebacks with
    locals) walk mappings they find in frames, but only ``repr`` other objects.
    """

    __slots__ = ("__pairs",)

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.__pairs = tuple(pairs)

    @classmethod
    def from_strategy(cls, strategy: AuthStrategy) -> Credentials:
        """Ask ``strategy`` for its headers and check them.

        Raises:
            AuthenticationError: the strategy failed or gave an unusable header
                (its value is never quoted).
        """
        if type(strategy) is BearerToken:
            return strategy._credentials
        try:
            given = strategy.auth_headers()
            pairs = [(str(name), str(value)) for name, value in given.items()]
        except Exception as exc:
            raise AuthenticationError(f"the auth strategy failed: {type(exc).__name__}") from exc
        del given
        for name, value in pairs:
            if _HEADER_NAME.fullmatch(name) is None:
                pairs.clear()
                raise AuthenticationError("the auth strategy gave an invalid header name")
            if _HEADER_VALUE.fullmatch(value) is None:
                bad = _first_bad(value.strip()) or (0, "surrounding spaces")
                pairs.clear()
                del value
                raise AuthenticationError(
                    f"the auth strategy's {name} header holds {bad[1]} at position {bad[0]}; "
                    "a header value is visible ASCII. Its value is not shown"
                )
        return cls(pairs)

    def names(self) -> tuple[str, ...]:
        """The header names (values stay inside)."""
        return tuple(name for name, _ in self.__pairs)

    def apply(self, headers: MutableMapping[str, str]) -> None:
        """Set the headers on an outgoing request's headers."""
        for name, value in self.__pairs:
            headers[name] = value

    def __repr__(self) -> str:
        return f"Credentials({', '.join(f'{name}=***' for name, _ in self.__pairs)})"

    def __reduce__(self) -> Any:
        raise TypeError("Credentials cannot be pickled (they hold a secret)")


class BearerToken:
    """A static API Entreprise JWT sent as ``Authorization: Bearer``.

    The token is kept out of ``repr``, ``str`` and pickles of the object.
    """

    __slots__ = ("__token", "_credentials", "_fingerprint", "_info")

    def __init__(self, token: str) -> None:
        token = check_token(token)
        self.__token = token
        self._fingerprint = fingerprint(token)
        self._info = TokenInfo.from_jwt(token)
        # Checked once here: every request reuses it instead of checking again.
        self._credentials = Credentials((("Authorization", f"Bearer {token}"),))

    def auth_headers(self) -> Mapping[str, str]:
        """The ``Authorization`` header."""
        return {"Authorization": f"Bearer {self.__token}"}

    @property
    def fingerprint(self) -> str:
        """Keyed hash of the token."""
        return self._fingerprint

    @property
    def token_info(self) -> TokenInfo | None:
        """Claims of the JWT, if it is one."""
        return self._info

    def __repr__(self) -> str:
        return f"BearerToken(fingerprint={self._fingerprint!r})"

    def __reduce__(self) -> Any:
        raise TypeError("BearerToken cannot be pickled (it holds a secret)")
