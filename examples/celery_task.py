"""A Celery task enriching a company record, with the synchronous ``Client``.

Celery runs tasks in worker threads (``--pool threads``) or forked processes
(``prefork``, the default): either way each process builds its one
``Client`` on first use (after the fork) and its threads share it, so the
governor holds every task of the worker to the API's limits. A 429 cannot
happen from here; should the API still pause a bucket, the task retries
once the pause is over instead of failing.

Wire it in your Celery app::

    app.task(name="entreprises.enrichir", bind=True, max_retries=5)(celery_task.enrichir_task)

Celery is not needed to read or run this file: :func:`enrichir` is the
task's body, which ``tests/test_examples.py`` calls from a pool of threads
against the emulator on loopback; with Celery installed, :data:`app` is a
Celery application with that task registered.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Protocol

from apientreprise_async import NotFoundError, RateLimitError

from ._demo import shared_client

__all__ = ["app", "enrichir", "enrichir_task"]


class BoundTask(Protocol):
    """What the task uses of Celery's bound ``Task``."""

    def retry(self, *, exc: BaseException, countdown: float) -> Any: ...


def enrichir(siren: str, dossier: str) -> dict[str, Any]:
    """The company's legal unit and its head office's town, for one case file."""
    client = shared_client()
    try:
        unite = client.insee.unites_legales(siren, object=f"dossier {dossier}").data
    except NotFoundError:
        return {"siren": siren, "found": False}
    siege = client.insee.unites_legales_siege_social(siren, object=f"dossier {dossier}").data
    return {
        "siren": siren,
        "found": True,
        "siret_siege": unite.siret_siege_social,
        "commune_siege": siege.adresse.libelle_commune,
    }


def enrichir_task(task: BoundTask, siren: str, dossier: str) -> dict[str, Any]:
    """The Celery task: :func:`enrichir`, retried after a pause the API imposed."""
    try:
        return enrichir(siren, dossier)
    except RateLimitError as exc:
        raise task.retry(exc=exc, countdown=exc.retry_after or 60) from exc


def _celery_app() -> Any:
    try:
        celery = importlib.import_module("celery")
    except ImportError:
        return None
    application = celery.Celery(
        "entreprises", broker=os.environ.get("CELERY_BROKER_URL", "memory://")
    )
    application.task(name="entreprises.enrichir", bind=True, max_retries=5)(enrichir_task)
    return application


#: The Celery application (``None`` without Celery installed).
app = _celery_app()
