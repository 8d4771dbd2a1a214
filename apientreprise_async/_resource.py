"""The base of the generated provider groups (``client.insee``, ``client.dgfip``...)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ._catalogue import Endpoint, get_endpoint

if TYPE_CHECKING:
    from ._client import AsyncClient
    from ._sync import Client

__all__ = ["ResourceGroup", "SyncResourceGroup"]


class ResourceGroup:
    """The typed methods of one data provider, bound to a client.

    Every method takes the identifiers of its path positionally and its query
    parameters as keywords, then these keywords, common to all:

    Args:
        recipient, context, object: traceability parameters; default to the client's.
        fresh: send ``Cache-Control: no-cache`` so the server skips its own cache.
        timeout: read timeout in seconds for this call (default: the client's
            for the operation's class, JSON or document).
        max_wait: how long the governor may hold the call back, in seconds
            (``None``: as long as needed; default: the client's).
        strict: raise :class:`UnexpectedPayloadError` when the answer does not
            fit its record (default: the client's ``strict``; lenient otherwise,
            the answer's ``problems`` then say what did not fit).

    Methods of endpoints published in several versions also take ``version=``;
    the newest is the default.

    Raises:
        ValueError: ``version`` names a version the endpoint does not have.
        InvalidParameterError: a parameter is missing or malformed (nothing sent).
        MaintenanceWindowError: the operation is in its maintenance window.
        ApiError: the server answered with an error (a subclass per status).
        TransportError: no usable answer.
        UnexpectedPayloadError: with ``strict``, the answer does not fit its record.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_client",)

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._client!r}>"

    @staticmethod
    def _pick(method: str, versions: Mapping[int, str], version: int) -> Endpoint:
        """The operation serving ``version`` of a method.

        Raises:
            ValueError: the endpoint has no such version.
        """
        operation_id = versions.get(version)
        if operation_id is None or isinstance(version, bool):
            known = ", ".join(str(v) for v in sorted(versions))
            raise ValueError(f"{method}: version {version!r} does not exist; supported: {known}")
        return get_endpoint(operation_id)


class SyncResourceGroup:
    """The typed methods of one data provider, bound to a synchronous :class:`Client`.

    The same methods, arguments and errors as :class:`ResourceGroup`; each
    call blocks until its :class:`Response` is there.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("_client",)

    def __init__(self, client: Client) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._client!r}>"

    _pick = staticmethod(ResourceGroup._pick)
