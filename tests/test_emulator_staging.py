"""Every case of the official staging data, replayed through the emulator."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest
import yaml

from apientreprise_async import get_endpoint
from apientreprise_async.testing import Emulator

from .conftest import RECIPIENT, TOKEN, shared_or_skip

pytestmark = pytest.mark.anyio

NOON = dt.datetime(2025, 1, 15, 11, 0, tzinfo=dt.UTC).timestamp()


async def test_every_staging_case_is_answered_exactly() -> None:
    """For each case's params the emulator returns exactly its status and payload."""
    folder = shared_or_skip() / "payloads"
    if not folder.is_dir():
        pytest.skip(f"staging payloads absent: {folder}")
    # Noon in Paris: no maintenance window turns a case into a 504.
    emulator = Emulator.from_staging_cases(folder, start_epoch=NOON, builtin_data=False)
    emulator.add_token(TOKEN)
    files = sorted(folder.glob("*/*.y*ml"))
    mismatches = []
    async with httpx.AsyncClient(
        transport=emulator.transport(),
        base_url="https://emulator.test",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        for path in files:
            case = yaml.safe_load(path.read_text("utf-8"))
            endpoint = get_endpoint(path.parent.name)
            params = {k: str(v) for k, v in (case.get("params") or {}).items()}
            values = {p.name: params.pop(p.name) for p in endpoint.path_params}
            query = {"context": "tests", "recipient": RECIPIENT, "object": "staging", **params}
            response = await client.get(endpoint.render_path(values), params=query)
            expected = (case["status"], json.loads(case["payload"]))
            if (response.status_code, response.json()) != expected:
                mismatches.append(f"{path.parent.name}/{path.name}: {response.status_code}")
    assert [] == mismatches
    assert len(files) == len(emulator.requests) > 100
