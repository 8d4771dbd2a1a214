"""The pytest plugin in a fresh project: no configuration, pytest-asyncio or anyio with trio.

Each case writes a small test module into an empty directory (no pyproject,
no conftest beyond what the case says) and runs pytest on it in a subprocess,
as a user's project would, with this checkout first on the path.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: Two tests on the process-wide governor, each using up a small window: without a
#: fresh governor per test the second would wait a whole minute for the first's slots.
USERS_TESTS = """
import anyio
import pytest
from apientreprise_async import AsyncClient, Client, records
from apientreprise_async.testing import Emulator

SIREN = "832147656"


def test_sync_fixture(api_entreprise_sync_client):
    response = api_entreprise_sync_client.insee.unites_legales(SIREN)
    assert isinstance(response.data, records.insee.UniteLegale)


{mark}
async def test_async_fixture(api_entreprise_client, api_entreprise_emulator):
    response = await api_entreprise_client.insee.unites_legales(SIREN)
    assert response.data.siren == SIREN
    assert len(api_entreprise_emulator.requests) == 1


{mark}
@pytest.mark.parametrize("round", [1, 2])
async def test_default_governor_is_fresh(round, api_entreprise_token):
    emulator = Emulator()
    emulator.add_token(api_entreprise_token, limits={{"json_resources_entreprise": 4}})
    async with AsyncClient(
        api_entreprise_token, transport=emulator.transport(), recipient="13002526500013",
        context="tests", object="fresh", check_maintenance=False,
    ) as client:
        with anyio.fail_after(20):
            for _ in range(4):
                await client.insee.unites_legales(SIREN)
    assert [r.status for r in emulator.requests] == [200] * 4
"""


def run_pytest(tmp_path: pathlib.Path, tests: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_users.py").write_text(textwrap.dedent(tests), "utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_fresh_project_under_anyio_with_trio(tmp_path: pathlib.Path) -> None:
    """anyio's plugin, every async test on asyncio and on trio; nothing else configured."""
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.fixture(params=["asyncio", "trio"])
            def anyio_backend(request):
                return request.param
            """
        ),
        "utf-8",
    )
    result = run_pytest(tmp_path, USERS_TESTS.format(mark="@pytest.mark.anyio"), "-p", "no:asyncio")
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "7 passed" in result.stdout


@pytest.mark.skipif(
    importlib.util.find_spec("pytest_asyncio") is None, reason="pytest-asyncio not installed"
)
def test_fresh_project_under_pytest_asyncio(tmp_path: pathlib.Path) -> None:
    """pytest-asyncio in its default strict mode, tests marked ``asyncio``."""
    result = run_pytest(tmp_path, USERS_TESTS.format(mark="@pytest.mark.asyncio"), "-p", "asyncio")
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "4 passed" in result.stdout
