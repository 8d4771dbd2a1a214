"""Authentication strategies (the seam the DINUM spec asks for) and token introspection."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

__all__ = ["AuthStrategy", "BearerToken", "TokenInfo", "fingerprint"]

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


class BearerToken:
    """A static API Entreprise JWT sent as ``Authorization: Bearer``.

    The token is kept out of ``repr``, ``str`` and pickles of the object.
    """

    __slots__ = ("__token", "_fingerprint", "_info")

    def __init__(self, token: str) -> None:
        token = token.strip()
        if not token:
            raise ValueError("token: empty")
        if any(c.isspace() for c in token):
            raise ValueError("token: contains whitespace")
        self.__token = token
        self._fingerprint = fingerprint(token)
        self._info = TokenInfo.from_jwt(token)

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
