"""What the examples share: one ``Client`` per process, real API or emulator.

With ``API_ENTREPRISE_TOKEN`` set, the examples call the API it belongs to
(``API_ENTREPRISE_BASE_URL`` may point elsewhere, as CI does with an
emulator on loopback). Without it they start the bundled emulator on a
loopback port, with fictional companies, so that they run anywhere.
"""

from __future__ import annotations

import atexit
import os
import threading

from apientreprise_async import Client
from apientreprise_async.testing import Emulator

__all__ = ["RECIPIENT", "shared_client"]

#: The administration the calls are made for (here DINUM's SIRET).
RECIPIENT = os.environ.get("API_ENTREPRISE_RECIPIENT", "13002526500013")
_DEMO_TOKEN = "demo-token"

_lock = threading.Lock()
_client: Client | None = None


def shared_client() -> Client:
    """The process's one ``Client``, built on first use (after any ``fork()``) and shared."""
    global _client  # one client per process, shared by every thread
    with _lock:
        if _client is None:
            token = base_url = None  # from API_ENTREPRISE_TOKEN and API_ENTREPRISE_BASE_URL
            if not os.environ.get("API_ENTREPRISE_TOKEN"):
                emulator = Emulator()
                server = emulator.serve()
                atexit.register(server.stop)
                token, base_url = emulator.add_token(_DEMO_TOKEN), server.url
            _client = Client(
                token,
                base_url=base_url,
                recipient=RECIPIENT,
                context=os.environ.get("API_ENTREPRISE_CONTEXT", "Instruction des aides"),
                object="examples",
            )
            atexit.register(_client.close)
        return _client
