"""The example app's page, driven by a real headless Chromium against a real uvicorn.

Needs Debian's ``chromium`` package and ``playwright`` (the ``test`` extra);
skips with the reason where either is missing. The app runs in a subprocess,
as ``uvicorn examples.fastapi_app:app`` would, answering from the emulator.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import ROOT

CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SIREN = "832147656"  # a built-in company of the emulator
UNKNOWN_SIREN = "418166096"  # valid checksum, unknown to the emulator

sync_api: Any = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (the test extra)"
)
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    """``uvicorn examples.fastapi_app:app`` on a free loopback port, without a token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("API_ENTREPRISE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app"]
    command += ["--host", "127.0.0.1", "--port", "0", "--no-access-log"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 30
        url = None
        seen = []
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            seen.append(line)
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            url = found.group(1) if found else None
        assert url is not None, "".join(seen)
        # Keep reading its log, so that a full pipe never blocks the server.
        threading.Thread(target=process.stderr.read, daemon=True).start()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def look_up(
    page: Any, siren: str, *, session: str = "demo-alice", case: str = "dossier-42"
) -> None:
    """Fill the form and submit it, as an agent would."""
    page.select_option("#session", session)
    page.fill("#case", case)
    page.fill("#siren", siren)
    page.click("button[type=submit]")


def test_the_page_shows_a_company_and_every_kind_of_error(app_url: str, browser: Any) -> None:
    """Found, unknown, malformed, not one's case: the page reads one body shape for all."""
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(app_url + "/")
    assert "Recherche d'entreprise" == page.title()

    look_up(page, SIREN)
    page.wait_for_selector("#result:not([hidden])")
    assert "ATELIERS MECANIQUES DU VAL DE LOIRE" == page.text_content("#raison_sociale")
    assert "A" == page.text_content("#etat")

    look_up(page, UNKNOWN_SIREN)
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error") == "404 not_found: No such entity at API Entreprise."

    look_up(page, "12345678X")
    page.wait_for_selector("#error:not([hidden])")
    assert (page.text_content("#error") or "").startswith("422 invalid_parameter: siren")

    look_up(page, SIREN, session="demo-bob")  # Bob asks for Alice's case
    page.wait_for_selector("#error:not([hidden])")
    assert "403 forbidden: this case is not yours" == page.text_content("#error")
    assert page.is_hidden("#result")

    # The browser only ever talked to the app, never to API Entreprise (no CORS to it).
    assert requests
    assert all(url.startswith(app_url) for url in requests)
    page.close()
