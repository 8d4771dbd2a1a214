"""A Django view serving a company's legal unit, with the synchronous ``Client``.

Django serves requests from a pool of threads: they all share the one
``Client`` of the process (see ``examples/_demo.py``), hence one connection
pool and one governor, and a burst of requests queues for the API's limits
instead of earning 429s. In a project, build the client in a module of your
own (or in ``AppConfig.ready()``) and wire the view in ``urls.py``::

    path("entreprises/<str:siren>", django_view.unite_legale)

The view answers plain JSON: 400 for a malformed SIREN (nothing sent), 404
for an unknown one, 503 with ``Retry-After`` when the governor would have
kept the caller waiting more than two seconds.

Django is not needed to read or run this file: without it, the view returns
a small stand-in response (``tests/test_examples.py`` drives it that way, from
many threads, against the emulator on loopback).
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Mapping
from typing import Any, Protocol

from apientreprise_async import InvalidSirenError, NotFoundError, RateLimitError

from ._demo import shared_client

__all__ = ["unite_legale"]


class Request(Protocol):
    """What the view reads from Django's ``HttpRequest``."""

    @property
    def GET(self) -> Mapping[str, str]: ...


class JsonAnswer:
    """The stand-in for ``JsonResponse`` when Django is not installed."""

    def __init__(self, data: dict[str, Any], status: int = 200) -> None:
        self.status_code = status
        self.content = json.dumps(data).encode()
        self.headers: dict[str, str] = {}

    def __setitem__(self, header: str, value: str) -> None:
        self.headers[header] = value


def _json(data: dict[str, Any], status: int = 200) -> Any:
    try:
        http = importlib.import_module("django.http")
    except ImportError:
        return JsonAnswer(data, status)
    return http.JsonResponse(data, status=status)


def unite_legale(request: Request, siren: str) -> Any:
    """``GET /entreprises/<siren>?dossier=...``: the legal unit, for one case file."""
    client = shared_client()
    case = request.GET.get("dossier")
    try:
        data = client.insee.unites_legales(
            siren,
            # Which case file the data is for (the audit trail keeps it too).
            object=f"dossier {case}" if case else "consultation",
            max_wait=2,  # a web request: answer 503 rather than queue longer
        ).data
    except InvalidSirenError as exc:
        return _json({"error": str(exc)}, status=400)
    except NotFoundError:
        return _json({"error": "unknown SIREN"}, status=404)
    except RateLimitError as exc:
        answer = _json({"error": "busy, try again shortly"}, status=503)
        answer["Retry-After"] = str(math.ceil(exc.retry_after or 1))
        return answer
    return _json({"siren": data.siren, "siege": data.siret_siege_social})
