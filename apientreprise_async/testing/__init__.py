"""Test kit for users of the library: an in-process API Entreprise emulator.

::

    emulator = Emulator(period=1.0)
    token = emulator.add_token("my-test-token")
    async with AsyncClient(token, transport=emulator.transport(), ...) as client:
        ...

A pytest plugin, installed with the package, provides the
``api_entreprise_emulator`` and ``api_entreprise_client`` fixtures.
"""

from __future__ import annotations

from apientreprise_async._governor import reset_default as reset_default_governor

from ._conformance import check_backend as check_backend
from ._data import COMPANIES as COMPANIES
from ._data import PUBLIC_COMPANIES as PUBLIC_COMPANIES
from ._data import Company as Company
from ._data import Establishment as Establishment
from ._emulator import DroppedConnection as DroppedConnection
from ._emulator import Emulator as Emulator
from ._emulator import EmulatorTransport as EmulatorTransport
from ._emulator import Faults as Faults
from ._emulator import RecordedRequest as RecordedRequest
from ._server import RunningServer as RunningServer

__all__ = [
    "COMPANIES",
    "PUBLIC_COMPANIES",
    "Company",
    "DroppedConnection",
    "Emulator",
    "EmulatorTransport",
    "Establishment",
    "Faults",
    "RecordedRequest",
    "RunningServer",
    "check_backend",
    "reset_default_governor",
]
