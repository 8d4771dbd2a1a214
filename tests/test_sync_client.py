"""``Client``: the synchronous client, on the async core, shared by threads."""

from __future__ import annotations

import inspect
import os
import pathlib
import threading
import warnings

import httpx
import pytest

from apientreprise_async import (
    AsyncClient,
    Client,
    InvalidSirenError,
    Limits,
    NotFoundError,
    Response,
    records,
)
from apientreprise_async._gen_resources import Resources
from apientreprise_async._gen_sync_resources import SyncResources
from apientreprise_async.audit import AuditRecord
from apientreprise_async.testing import Emulator

from .conftest import RECIPIENT, TOKEN

PDF = b"%PDF-1.4\n" + b"x" * 10_000 + b"\n%%EOF\n"


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "apientreprise-client"]


@pytest.fixture
def emulator() -> Emulator:
    emulator = Emulator(period=1.0)
    emulator.add_token(TOKEN)
    return emulator


def make(emulator: Emulator, **options: object) -> Client:
    return Client(
        TOKEN,
        transport=emulator.transport(),
        limits=Limits(period=emulator.period),
        recipient=RECIPIENT,
        context="tests",
        object="sync",
        check_maintenance=False,
        **options,  # type: ignore[arg-type]
    )


def test_typed_methods_call_and_get_return_what_the_async_client_does(
    emulator: Emulator,
) -> None:
    """Records, raw JSON and metadata, blocking; the loop thread ends with the client."""
    before = len(loop_threads())
    with make(emulator) as client:
        typed = client.insee.unites_legales("832147656")
        by_id = client.call("api_entreprise_v4_insee_unites_legales", siren="832147656")
        raw = client.get("/v4/insee/sirene/unites_legales/832147656")
        privileges = client.privileges()
        assert len(loop_threads()) == before + 1
    assert isinstance(typed, Response)
    assert isinstance(typed.data, records.insee.UniteLegale)
    assert "832147656" == typed.data.siren == by_id.data.siren
    assert "832147656" == raw.data["siren"]
    assert "api_entreprise_v4_insee_unites_legales" in privileges.data.privileges
    assert typed.request_id
    assert len(loop_threads()) == before
    assert 4 == len(emulator.requests)


def test_errors_are_the_async_clients_own(emulator: Emulator) -> None:
    """A local refusal and a server error raise the same typed exceptions."""
    with make(emulator) as client:
        with pytest.raises(InvalidSirenError):
            client.insee.unites_legales("123")
        with pytest.raises(NotFoundError) as caught:
            client.insee.unites_legales("418166096")
    assert 404 == caught.value.http_status
    assert 1 == len(emulator.requests)  # the invalid SIREN never left


def test_audit_sink_gets_one_record_per_attempt(emulator: Emulator) -> None:
    """The audit trail is the async client's: one record per call, from the loop thread."""
    seen: list[AuditRecord] = []
    with make(emulator, audit=seen.append, user="agent-7") as client:
        client.insee.unites_legales("832147656")
        with pytest.raises(NotFoundError):
            client.insee.unites_legales("418166096")
    assert [200, 404] == [r.http_status for r in seen]
    assert {"agent-7"} == {r.user for r in seen}


def test_download_is_atomic(tmp_path: pathlib.Path) -> None:
    """A document lands whole at its destination."""
    transport = httpx.MockTransport(
        lambda r: httpx.Response(200, content=PDF, headers={"Content-Type": "application/pdf"})
    )
    with Client(TOKEN, transport=transport, limits=Limits(period=1.0)) as client:
        written = client.download("https://storage.example.test/files/a.pdf", tmp_path)
    assert tmp_path / "a.pdf" == written
    assert PDF == written.read_bytes()


def test_shared_by_sixteen_threads(emulator: Emulator) -> None:
    """One client, sixteen threads calling at once: every call completes, one loop serves them."""
    results: list[str] = []
    errors: list[BaseException] = []
    with make(emulator) as client:

        def work() -> None:
            try:
                for _ in range(3):
                    results.append(client.insee.unites_legales("832147656").data.siren)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        stats = client.stats()
    assert not errors
    assert ["832147656"] * 48 == results
    assert 48 == stats.calls


def test_close_is_idempotent_and_final(emulator: Emulator) -> None:
    """After close, calls are refused; an unused client closes without starting a loop."""
    client = make(emulator)
    client.close()
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.insee.unites_legales("832147656")
    assert not emulator.requests


def test_with_options_shares_the_loop_and_pool(emulator: Emulator) -> None:
    """A copy with other traceability uses the parent's loop; closing it leaves the parent open."""
    seen: list[AuditRecord] = []
    with make(emulator, audit=seen.append) as client:
        other = client.with_options(object="other")
        other.insee.unites_legales("832147656")
        other.close()
        client.insee.unites_legales("832147656")
        assert 1 == len(loop_threads())
    assert ["other", "sync"] == [r.object for r in seen]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_gets_a_loop_and_pool_of_its_own(emulator: Emulator) -> None:
    """Built and used before fork (gunicorn --preload): the child still calls."""
    with make(emulator) as client:
        client.insee.unites_legales("832147656")
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() with threads running: the point of this test.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: no loop thread came across the fork
            code = 1
            try:
                code = 0 if client.insee.unites_legales("832147656").data.siren else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert 0 == os.waitstatus_to_exitcode(status)


def test_same_settings_and_methods_as_the_async_client() -> None:
    """Every constructor argument, call and typed method of AsyncClient exists here, blocking."""
    assert list(inspect.signature(AsyncClient.__init__).parameters) == list(
        inspect.signature(Client.__init__).parameters
    )
    for name in ("call", "get", "privileges", "download", "with_options"):
        mine = inspect.signature(getattr(Client, name))
        theirs = inspect.signature(getattr(AsyncClient, name))
        assert list(theirs.parameters) == list(mine.parameters), name
        assert not inspect.iscoroutinefunction(getattr(Client, name))
    groups = inspect.get_annotations(Resources)
    sync_groups = inspect.get_annotations(SyncResources)
    assert list(groups) == list(sync_groups)
    for provider in groups:
        client = Client(TOKEN)
        group, sync_group = getattr(AsyncClient(TOKEN), provider), getattr(client, provider)
        methods = [m for m in dir(group) if not m.startswith("_")]
        assert methods == [m for m in dir(sync_group) if not m.startswith("_")]
        for method in methods:
            assert inspect.signature(getattr(group, method)).parameters.keys() == (
                inspect.signature(getattr(sync_group, method)).parameters.keys()
            )
        client.close()


def test_first_lookups_from_many_threads_at_once() -> None:
    """The catalogue loads once, whole, when threads ask for their first operation together."""
    import subprocess
    import sys

    code = (
        "import threading\n"
        "from apientreprise_async import get_endpoint\n"
        "barrier = threading.Barrier(16); errors = []\n"
        "def look():\n"
        "    barrier.wait()\n"
        "    try: get_endpoint('api_entreprise_v4_insee_unites_legales')\n"
        "    except Exception as exc: errors.append(exc)\n"
        "threads = [threading.Thread(target=look) for _ in range(16)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "assert not errors, errors\n"
    )
    for _ in range(3):  # a fresh interpreter each time: the catalogue is not loaded yet
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert 0 == result.returncode, result.stderr
