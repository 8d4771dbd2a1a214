"""The catalogue: one frozen :class:`Endpoint` per API operation.

The data itself lives in :mod:`apientreprise_async._gen_catalogue`, written by
``tools/generate.py`` from the OpenAPI description; this module holds the
types and the lookups every other part (client, governor, emulator) uses.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import threading
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = [
    "DOWNLOAD_ENDPOINT",
    "GROUP_LIMITS",
    "IP_LIMIT",
    "Endpoint",
    "IdKind",
    "Maintenance",
    "PathParam",
    "QueryParam",
    "TimeoutClass",
    "all_endpoints",
    "get_endpoint",
    "match_path",
]


class IdKind(enum.Enum):
    """What an identifier parameter must look like."""

    SIREN = "siren"
    SIRET = "siret"
    RNA = "rna"
    EORI = "eori"
    YEAR = "year"
    MONTH = "month"
    SIREN_OR_RNA = "siren_or_rna"
    SIRET_OR_RNA = "siret_or_rna"
    SIRET_OR_EORI = "siret_or_eori"
    SIREN_OR_SIRET_OR_RNA = "siren_or_siret_or_rna"
    TEXT = "text"


class TimeoutClass(enum.Enum):
    """Which read-timeout default applies to an operation."""

    JSON = "json"
    DOCUMENT = "document"
    DOWNLOAD = "download"


@attrs.frozen
class PathParam:
    """A templated segment of an endpoint path."""

    name: str
    kind: IdKind


@attrs.frozen
class QueryParam:
    """An operation-specific query parameter (traceability ones excluded)."""

    name: str
    required: bool = False
    kind: IdKind = IdKind.TEXT
    choices: tuple[str, ...] = ()


@attrs.frozen
class Maintenance:
    """A daily maintenance window, in Europe/Paris local time."""

    from_hour: dt.time
    to_hour: dt.time

    def contains(self, local: dt.time) -> bool:
        """Tell whether a Paris wall-clock time falls in the window."""
        if self.from_hour <= self.to_hour:
            return self.from_hour <= local < self.to_hour
        return local >= self.from_hour or local < self.to_hour


@attrs.frozen
class Endpoint:
    """Everything the client needs to know about one operation.

    ``rate_group`` names the server's throttle bucket; when ``per_endpoint``
    is true the bucket is the operation itself (the group only gives its
    default limit), otherwise every operation of the group shares it.
    """

    operation_id: str
    path: str
    provider: str
    version: int
    path_params: tuple[PathParam, ...] = ()
    query_params: tuple[QueryParam, ...] = ()
    rate_group: str = "json_resources_entreprise"
    per_endpoint: bool = False
    timeout_class: TimeoutClass = TimeoutClass.JSON
    deprecated: bool = False
    successor: str | None = None
    maintenance: Maintenance | None = None
    traceability: bool = True
    cache_control: bool = False
    record: Any = None
    statuses: tuple[int, ...] = ()
    #: ``query_params`` by name, derived once (every call looks its parameters up).
    query_by_name: Mapping[str, QueryParam] = attrs.field(
        init=False, eq=False, repr=False, hash=False
    )

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "query_by_name", {q.name: q for q in self.query_params})

    @property
    def bucket(self) -> str:
        """The name of the rate bucket this operation draws from."""
        return self.operation_id if self.per_endpoint else self.rate_group

    def render_path(self, values: Mapping[str, str]) -> str:
        """Fill the path template with already validated values."""
        path = self.path
        for param in self.path_params:
            path = path.replace("{" + param.name + "}", values[param.name])
        return path


#: Default per-token limits per minute, by throttle group (the server's configuration).
GROUP_LIMITS: Mapping[str, int] = {
    "json_resources_entreprise": 250,
    "low_latency_documents": 50,
    "high_latency_documents": 5,
    "inpi_rne": 15,
    "urssaf_attestation_sociales": 100,
    "gip_mds": 50,
    "proxied_files": 50,
}
#: Calls per minute allowed from one client IP, all tokens together.
IP_LIMIT = 1000

#: The pseudo-operation used for document downloads (``proxied_files`` bucket).
DOWNLOAD_ENDPOINT = Endpoint(
    operation_id="api_entreprise_proxied_files",
    path="/proxy/files/{id}",
    provider="proxy",
    version=0,
    rate_group="proxied_files",
    per_endpoint=True,
    timeout_class=TimeoutClass.DOWNLOAD,
    traceability=False,
)

_BY_ID: dict[str, Endpoint] = {}
_PATTERNS: list[tuple[re.Pattern[str], Endpoint]] = []
_LOADING = threading.Lock()


def _load() -> None:
    # Threads may look up their first operation at once: build aside, publish whole.
    with _LOADING:
        if _BY_ID:
            return
        from ._gen_catalogue import ENDPOINTS

        by_id: dict[str, Endpoint] = {}
        patterns: list[tuple[re.Pattern[str], Endpoint]] = []
        for endpoint in ENDPOINTS:
            by_id[endpoint.operation_id] = endpoint
            regex = re.escape(endpoint.path)
            for param in endpoint.path_params:
                name = param.name
                regex = regex.replace(re.escape("{" + name + "}"), f"(?P<{name}>[^/]+)")
            patterns.append((re.compile(f"^{regex}$"), endpoint))
        # Literal segments must win over templated ones ("diffusibles/{siren}" vs "{siren}").
        patterns.sort(key=lambda item: item[1].path.count("{"))
        _PATTERNS[:] = patterns
        _BY_ID.update(by_id)  # last: a non-empty table means a complete one


def all_endpoints() -> tuple[Endpoint, ...]:
    """Every operation of the catalogue, in a stable order."""
    if not _BY_ID:
        _load()
    return tuple(_BY_ID.values())


def get_endpoint(operation_id: str) -> Endpoint:
    """Look an operation up by its OpenAPI ``x-operationId``.

    Raises:
        UnknownOperationError: no such operation in the catalogue.
    """
    if not _BY_ID:
        _load()
    try:
        return _BY_ID[operation_id]
    except KeyError:
        from ._errors import UnknownOperationError

        raise UnknownOperationError(operation_id) from None


def match_path(path: str) -> tuple[Endpoint, dict[str, str]] | None:
    """Find the operation serving a concrete path, with its path values."""
    if not _BY_ID:
        _load()
    for pattern, endpoint in _PATTERNS:
        found = pattern.match(path)
        if found:
            return endpoint, found.groupdict()
    return None
