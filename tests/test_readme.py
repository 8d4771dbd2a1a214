"""Every Python block of the README and of the documentation runs as written.

Each block is a complete program (or a pytest module) and is run as one, in a
subprocess, against ``apientreprise emulator --token-file ...`` served on
loopback, with only the settings a user would export: ``API_ENTREPRISE_TOKEN``,
``API_ENTREPRISE_BASE_URL``, ``API_ENTREPRISE_RECIPIENT``/``_CONTEXT``/``_OBJECT``
and, for the Redis ones, ``REDIS_URL`` (a throwaway redis-server; skipped with
the reason where there is none).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from ._redis_server import redis_server
from .conftest import RECIPIENT, ROOT
from .test_cli import emulator_process

#: What makes a block a program: it runs an event loop, or builds the synchronous Client.
RUNS = re.compile(r"\b(?:anyio|asyncio|trio)\.run\(|\bClient\(")
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(path: pathlib.Path) -> list[tuple[int, str]]:
    """``(line, code)`` of each Python block of a Markdown file."""
    text = path.read_text("utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in BLOCK.finditer(text)]


BLOCKS = [
    pytest.param(path, line, code, id=f"{path.relative_to(ROOT)}:{line}")
    for path in PAGES
    for line, code in python_blocks(path)
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``apientreprise emulator --port 0 --token-file FILE``, as a user starts it."""
    folder = tmp_path_factory.mktemp("emulator")
    token_file = folder / "token.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("API_ENTREPRISE_")}
    with emulator_process("--token-file", str(token_file), environ=env) as url:
        yield url, token_file.read_text("utf-8").strip()


def test_the_readme_has_at_least_six_programs() -> None:
    """The README shows complete programs, not fragments."""
    blocks = python_blocks(ROOT / "README.md")
    programs = [code for _, code in blocks if RUNS.search(code)]
    assert len(programs) >= 6, len(programs)


def test_the_first_screen_sets_up_and_shows_a_short_program() -> None:
    """First screen: the two commands (demo, tests) on a fresh machine, then a 10-line example."""
    head = (ROOT / "README.md").read_text("utf-8").split("\n## ", 1)[0]
    commands = re.search(r"```sh\n(.*?)```", head, re.S)
    assert commands is not None
    lines = [line for line in commands.group(1).splitlines() if line.strip()]
    assert 2 == len(lines)
    assert "apientreprise demo" in lines[0]
    assert "pytest" in lines[1]
    first = BLOCK.search(head)
    assert first is not None
    assert RUNS.search(first.group(1))
    assert len(first.group(1).strip().splitlines()) <= 12


@pytest.mark.parametrize(("path", "line", "code"), BLOCKS)
def test_block_runs_as_written(
    served: tuple[str, str], tmp_path: pathlib.Path, path: pathlib.Path, line: int, code: str
) -> None:
    """The block, saved as a file, runs with exit code 0 and only the documented settings."""
    url, token = served
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        # This test's runtime directory (conftest): the default governor of a block shares
        # the host's quota (a scripted 429's pause on "test-token") with no other test run.
        "APIENTREPRISE_ASYNC_RUNTIME_DIR": os.environ["APIENTREPRISE_ASYNC_RUNTIME_DIR"],
        "PYTHONPATH": str(ROOT),
        "API_ENTREPRISE_TOKEN": token,
        "API_ENTREPRISE_BASE_URL": url,
        "API_ENTREPRISE_RECIPIENT": RECIPIENT,
        "API_ENTREPRISE_CONTEXT": "Documentation",
        "API_ENTREPRISE_OBJECT": f"{path.stem}-{line}",
    }
    if "def test_" in code:
        script = tmp_path / "test_block.py"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)]
    else:  # a program: asynchronous (anyio/asyncio/trio.run) or with the synchronous Client
        script = tmp_path / "block.py"
        command = [sys.executable, str(script)]
    script.write_text(code, "utf-8")
    if "REDIS_URL" in code:
        if shutil.which("redis-server") is None:
            pytest.skip("no redis-server binary on PATH (apt-get install redis-server)")
        with redis_server() as redis_url:
            env["REDIS_URL"] = redis_url
            done = _run(command, env, tmp_path)
    else:
        done = _run(command, env, tmp_path)
    assert 0 == done.returncode, f"{path.name}:{line}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    assert token not in done.stdout + done.stderr


def _run(
    command: list[str], env: dict[str, str], cwd: pathlib.Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=90, check=False
    )
