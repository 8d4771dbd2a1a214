"""Async, typed client for API Entreprise with a governor that keeps you under the limits."""

from __future__ import annotations

from typing import Any

from . import records as records
from ._auth import AuthStrategy as AuthStrategy
from ._auth import BearerToken as BearerToken
from ._auth import TokenInfo as TokenInfo
from ._batch import BATCH_RETRY as BATCH_RETRY
from ._batch import Batch as Batch
from ._batch import BatchStats as BatchStats
from ._batch import Outcome as Outcome
from ._catalogue import Endpoint as Endpoint
from ._catalogue import all_endpoints as all_endpoints
from ._catalogue import get_endpoint as get_endpoint
from ._circuit import CircuitPolicy as CircuitPolicy
from ._client import DOCUMENT_CONTENT_TYPES as DOCUMENT_CONTENT_TYPES
from ._client import AsyncClient as AsyncClient
from ._client import TokenExpiryWarning as TokenExpiryWarning
from ._config import SizeLimits as SizeLimits
from ._config import Timeouts as Timeouts
from ._errors import ApiEntrepriseError as ApiEntrepriseError
from ._errors import ApiError as ApiError
from ._errors import AuthenticationError as AuthenticationError
from ._errors import AuthorizationError as AuthorizationError
from ._errors import ClientError as ClientError
from ._errors import ConflictError as ConflictError
from ._errors import ErrorItem as ErrorItem
from ._errors import InvalidIdentifierError as InvalidIdentifierError
from ._errors import InvalidParameterError as InvalidParameterError
from ._errors import InvalidSirenError as InvalidSirenError
from ._errors import InvalidSiretError as InvalidSiretError
from ._errors import MaintenanceWindowError as MaintenanceWindowError
from ._errors import MissingParameterError as MissingParameterError
from ._errors import NotFoundError as NotFoundError
from ._errors import ProviderError as ProviderError
from ._errors import ProviderUnavailableError as ProviderUnavailableError
from ._errors import RateLimitError as RateLimitError
from ._errors import ServerError as ServerError
from ._errors import ServiceUnreachable as ServiceUnreachable
from ._errors import TokenExpiredError as TokenExpiredError
from ._errors import TransportError as TransportError
from ._errors import UnavailableForLegalReasonsError as UnavailableForLegalReasonsError
from ._errors import UnexpectedPayloadError as UnexpectedPayloadError
from ._errors import UnfitFieldError as UnfitFieldError
from ._errors import UnknownOperationError as UnknownOperationError
from ._errors import ValidationError as ValidationError
from ._governor import Governor as Governor
from ._governor import Limits as Limits
from ._identifiers import is_valid_siren as is_valid_siren
from ._identifiers import is_valid_siret as is_valid_siret
from ._response import RateLimit as RateLimit
from ._response import Response as Response
from ._retry import RetryPolicy as RetryPolicy
from ._sync import Client as Client
from ._telemetry import Stats as Stats
from .records._base import OpenEnum as OpenEnum
from .records._base import Timestamp as Timestamp

__all__ = [
    "BATCH_RETRY",
    "DOCUMENT_CONTENT_TYPES",
    "ApiEntrepriseError",
    "ApiError",
    "AsyncClient",
    "AuthStrategy",
    "AuthenticationError",
    "AuthorizationError",
    "Batch",
    "BatchStats",
    "BearerToken",
    "CircuitPolicy",
    "Client",
    "ClientError",
    "ConflictError",
    "Endpoint",
    "ErrorItem",
    "Governor",
    "InvalidIdentifierError",
    "InvalidParameterError",
    "InvalidSirenError",
    "InvalidSiretError",
    "Limits",
    "MaintenanceWindowError",
    "MissingParameterError",
    "NotFoundError",
    "OpenEnum",
    "Outcome",
    "ProviderError",
    "ProviderUnavailableError",
    "RateLimit",
    "RateLimitError",
    "Response",
    "RetryPolicy",
    "ServerError",
    "ServiceUnreachable",
    "SizeLimits",
    "Stats",
    "Timeouts",
    "Timestamp",
    "TokenExpiredError",
    "TokenExpiryWarning",
    "TokenInfo",
    "TransportError",
    "UnavailableForLegalReasonsError",
    "UnexpectedPayloadError",
    "UnfitFieldError",
    "UnknownOperationError",
    "ValidationError",
    "__version__",
    "all_endpoints",
    "get_endpoint",
    "is_valid_siren",
    "is_valid_siret",
    "records",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from ._version import version

        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
