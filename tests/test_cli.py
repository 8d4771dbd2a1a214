"""The `apientreprise` command, run as a subprocess against the emulator served on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from apientreprise_async.testing import COMPANIES, Emulator, Faults

from .conftest import RECIPIENT, TOKEN

UL = "api_entreprise_v4_insee_unites_legales"
KNOWN = [c.siren for c in COMPANIES]


def luhn(prefix: str) -> str:
    """``prefix`` completed with its Luhn digit."""
    for digit in "0123456789":
        total = 0
        for position, char in enumerate(reversed(prefix + digit)):
            value = int(char) * (2 if position % 2 else 1)
            total += value - 9 if value > 9 else value
        if total % 10 == 0:
            return prefix + digit
    raise AssertionError


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    """An emulator (60 s period, 20 ms answers) on loopback, knowing the test token."""
    emulator = Emulator(faults=Faults(latency=0.02))
    emulator.add_token(TOKEN)
    with emulator.serve(port=0) as url:
        yield emulator, url


def env(url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of the command: token, base URL and traceability from variables."""
    out = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("API_ENTREPRISE_") and k != "COLUMNS"
    }
    out.update(
        API_ENTREPRISE_TOKEN=TOKEN,
        API_ENTREPRISE_RECIPIENT=RECIPIENT,
        API_ENTREPRISE_CONTEXT="tests",
        API_ENTREPRISE_OBJECT="cli",
        COLUMNS="120",
    )
    if url is not None:
        out["API_ENTREPRISE_BASE_URL"] = url
    out.update(extra)
    return out


def cli(
    *args: str, environ: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m apientreprise_async ARGS` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "apientreprise_async", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def emulator_process(*options: str, environ: dict[str, str]) -> Iterator[str]:
    """`apientreprise emulator --port 0 OPTIONS` running; yields its URL; it exits 0 on SIGTERM."""
    command = [sys.executable, "-m", "apientreprise_async", "emulator", "--port", "0", *options]
    with subprocess.Popen(
        command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as process:
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            url = first.rsplit(" ", 1)[-1].strip()
            assert url.startswith("http://127.0.0.1:"), first
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            assert 0 == process.wait(timeout=15)


def lines_of(path: pathlib.Path) -> list[dict[str, Any]]:
    """The outcome lines of a batch output."""
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_demo_runs_without_token_or_network() -> None:
    """The README's main command: a batch against the in-process emulator, 0 429."""
    done = cli("demo", "--calls", "300", environ=env(API_ENTREPRISE_TOKEN=""), timeout=60)
    assert 0 == done.returncode, done.stderr
    assert "429 received" in done.stdout
    assert "0 answers were 429" in done.stdout
    assert "Traceback" not in done.stderr


def test_batch_csv_writes_every_input_once_and_fails_on_invalid(
    served: tuple[Emulator, str], tmp_path: pathlib.Path
) -> None:
    """CSV with a chosen column: one line per input; an invalid one makes the exit code 1."""
    emulator, url = served
    source = tmp_path / "in.csv"
    rows = [*KNOWN, "418166096", "12345678X"]
    source.write_text("nom;siren\n" + "".join(f"x{i};{s}\n" for i, s in enumerate(rows)), "utf-8")
    out = tmp_path / "out.jsonl"
    done = cli(
        "batch",
        UL,
        "--input",
        str(source),
        "--column",
        "siren",
        "--output",
        str(out),
        environ=env(url),
    )
    assert 1 == done.returncode, done.stderr
    assert "apientreprise: inputs: 1 invalid, refused locally; see" in done.stderr
    assert 1 == len(done.stderr.splitlines())
    found = (re.match(r"\s*(.+?)\s{2,}(\S+)\s*$", line) for line in done.stdout.splitlines())
    summary = {row[1]: row[2] for row in found if row}
    assert "1" == summary["invalid, refused locally"]  # the summary says the same
    assert "0" == summary["errors"]
    assert "Traceback" not in done.stderr
    results = {line["input"]: line for line in lines_of(out)}
    assert sorted(rows) == sorted(results)
    assert "ok" == results[KNOWN[0]]["status"]
    assert "not_found" == results["418166096"]["status"]
    assert "invalid" == results["12345678X"]["status"]
    assert len(rows) - 1 == len(emulator.requests)  # the malformed one never left


def test_batch_resumes_exactly_once_after_sigkill(
    served: tuple[Emulator, str], tmp_path: pathlib.Path
) -> None:
    """kill -9 half way, rerun: every input appears exactly once in the output."""
    _, url = served
    total = 160
    ids = [luhn(f"{30_000_000 + 7919 * n:08d}") for n in range(total)]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(ids) + "\n", "utf-8")
    out = tmp_path / "out.jsonl"
    args = [sys.executable, "-m", "apientreprise_async", "batch", UL]
    args += ["--input", str(source), "--output", str(out), "--concurrency", "2"]
    process = subprocess.Popen(
        args, env=env(url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") >= total // 2:
                break
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=10)
    first = out.read_bytes().count(b"\n")
    assert 0 < first < total, first
    done = cli("batch", UL, "--input", str(source), "--output", str(out), environ=env(url))
    assert 0 == done.returncode, done.stderr
    inputs = [line["input"] for line in lines_of(out)]
    assert sorted(ids) == sorted(inputs)  # all there, none twice
    assert all(line["status"] == "not_found" for line in lines_of(out))


def test_batch_writes_each_input_line_once_with_duplicates_and_on_resume(
    served: tuple[Emulator, str], tmp_path: pathlib.Path
) -> None:
    """An input listed twice gets two lines, fresh or resumed; a rerun tops up to exactly that."""
    emulator, url = served
    ids = [KNOWN[0], KNOWN[1], KNOWN[0], "418166096", KNOWN[0], "418166096"]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(ids) + "\n", "utf-8")
    out = tmp_path / "out.jsonl"
    args = ["batch", UL, "--input", str(source), "--output", str(out), "--concurrency", "1"]
    done = cli(*args, environ=env(url))
    assert 0 == done.returncode, done.stderr
    assert sorted(enumerate(ids)) == sorted(
        (line["index"], line["input"]) for line in lines_of(out)
    )
    assert len(ids) == len(emulator.requests)
    # As if killed after three lines (one worker: the first three inputs), then rerun.
    out.write_bytes(b"".join(out.read_bytes().splitlines(keepends=True)[:3]))
    done = cli(*args, environ=env(url))
    assert 0 == done.returncode, done.stderr
    assert sorted(enumerate(ids)) == sorted(
        (line["index"], line["input"]) for line in lines_of(out)
    )
    assert len(ids) + 3 == len(emulator.requests)


def test_call_prints_json_and_reports_errors_in_one_line(served: tuple[Emulator, str]) -> None:
    """`call` prints the answer as JSON; a 404 is one line on stderr and exit code 1."""
    _, url = served
    done = cli("call", UL, KNOWN[0], environ=env(url))
    assert 0 == done.returncode, done.stderr
    assert KNOWN[0] == json.loads(done.stdout)["data"]["siren"]
    missing = cli("call", UL, "418166096", environ=env(url))
    assert 1 == missing.returncode
    assert 1 == len(missing.stderr.strip().splitlines())
    assert missing.stderr.startswith("apientreprise: not found")


def test_privileges_and_token_info_never_print_the_token(
    served: tuple[Emulator, str], tmp_path: pathlib.Path
) -> None:
    """`privileges` lists them; `token-info` shows expiry and scopes, never the token."""
    _, url = served
    listed = cli("privileges", environ=env(url))
    assert 0 == listed.returncode, listed.stderr
    assert UL in listed.stdout
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", "utf-8")
    info = cli("token-info", "--token-file", str(token_file), environ=env(API_ENTREPRISE_TOKEN=""))
    assert 0 == info.returncode, info.stderr
    assert "unites_legales_etablissements_insee" in info.stdout
    assert "expires" in info.stdout
    for secret in (TOKEN, TOKEN.split(".")[1], TOKEN.split(".")[2]):
        assert secret not in info.stdout + info.stderr


def test_token_is_never_an_argument_and_missing_token_is_one_line() -> None:
    """`--token VALUE` is refused (no abbreviation of --token-file); no token: exit 3."""
    refused = cli("call", UL, KNOWN[0], "--token", TOKEN, environ=env())
    assert 2 == refused.returncode
    assert TOKEN not in refused.stderr
    missing = cli("call", UL, KNOWN[0], environ=env(API_ENTREPRISE_TOKEN=""))
    assert 3 == missing.returncode
    assert "apientreprise: no token: set API_ENTREPRISE_TOKEN or pass --token-file FILE\n" == (
        missing.stderr
    )


def test_unreachable_server_and_bad_input_are_one_line() -> None:
    """Nothing listening: exit 5; unreadable input: exit 3; never a traceback."""
    down = cli("call", UL, KNOWN[0], environ=env("http://127.0.0.1:9"), timeout=60)
    assert 5 == down.returncode, down.stderr
    assert "Traceback" not in down.stderr
    assert 1 == len(down.stderr.strip().splitlines())
    bad = cli("batch", UL, "--input", "/nonexistent.csv", "--output", "x.jsonl", environ=env())
    assert 3 == bad.returncode
    assert "apientreprise: no input file /nonexistent.csv\n" == bad.stderr


def test_missing_extra_names_the_install_command(tmp_path: pathlib.Path) -> None:
    """Without rich, the command says which extra to install."""
    (tmp_path / "rich").mkdir()
    (tmp_path / "rich" / "__init__.py").write_text("raise ImportError('no rich here')\n", "utf-8")
    done = cli("demo", environ=env(PYTHONPATH=str(tmp_path)))
    assert 3 == done.returncode
    assert "pip install 'apientreprise_async[cli]'" in done.stderr


def test_emulator_command_serves_on_loopback(tmp_path: pathlib.Path) -> None:
    """`emulator --port 0` prints its URL, answers the token it created, stops on SIGTERM."""
    token_file = tmp_path / "token"
    served = emulator_process("--token-file", str(token_file), environ=env(API_ENTREPRISE_TOKEN=""))
    with served as url:
        token = token_file.read_text("utf-8").strip()
        answer = httpx.get(
            f"{url}/v4/insee/sirene/unites_legales/{KNOWN[0]}",
            params={"recipient": RECIPIENT, "context": "t", "object": "o"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert 200 == answer.status_code


def expired_token() -> str:
    """A JWT-shaped token whose ``exp`` is long past."""
    import base64

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'sub': 'old', 'exp': 1_000_000})}.eA"


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("refused token", 4),
        ("expired token file", 3),
        ("token expired on the server", 3),
        ("unreachable server", 5),
        ("no recipient", 3),
        ("wrong column", 3),
        ("no identifier column", 3),
    ],
)
def test_batch_failure_not_about_an_input_is_one_line_and_writes_nothing(
    served: tuple[Emulator, str], tmp_path: pathlib.Path, case: str, code: int
) -> None:
    """Configuration, token or server failures: documented code, one line, no output line.

    Once the cause is fixed, the rerun does every input (nothing was marked done).
    """
    emulator, url = served
    source = tmp_path / "in.csv"
    header = "nom,raison" if case == "no identifier column" else "nom,siren"
    source.write_text(f"{header}\na,{KNOWN[0]}\nb,{KNOWN[1]}\nc,418166096\n", "utf-8")
    out = tmp_path / "out.jsonl"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", "utf-8")
    args = ["batch", "insee.unites_legales", "--input", str(source), "--output", str(out)]
    broken = [*args, "--token-file", str(token_file)]
    environ = env(url, API_ENTREPRISE_TOKEN="")
    if case == "refused token":
        token_file.write_text("not-a-token-the-server-knows\n", "utf-8")
    elif case == "expired token file":
        token_file.write_text(expired_token() + "\n", "utf-8")
    elif case == "token expired on the server":  # its exp claim says nothing: the server does
        token_file.write_text(emulator.add_token("revoked-by-expiry", state="expired") + "\n")
    elif case == "unreachable server":
        environ["API_ENTREPRISE_BASE_URL"] = "http://127.0.0.1:9"
    elif case == "no recipient":
        del environ["API_ENTREPRISE_RECIPIENT"]
    elif case == "wrong column":
        broken += ["--column", "siret"]
    done = cli(*broken, environ=environ)
    assert code == done.returncode, done.stderr
    assert 1 == len(done.stderr.splitlines()), done.stderr
    assert done.stderr.startswith("apientreprise: ")
    assert "Traceback" not in done.stderr + done.stdout
    assert not out.exists() or "" == out.read_text("utf-8")
    if case == "no identifier column":
        assert "'nom', 'raison'" in done.stderr  # the columns it saw
        return
    sent = len(emulator.requests)
    fixed = cli(*args, environ=env(url))
    assert 0 == fixed.returncode, fixed.stderr
    assert sorted([KNOWN[0], KNOWN[1], "418166096"]) == sorted(x["input"] for x in lines_of(out))
    assert sent + 3 == len(emulator.requests)


def test_retry_errors_does_again_only_errors_worth_retrying(
    served: tuple[Emulator, str], tmp_path: pathlib.Path
) -> None:
    """A 502 line from an earlier run is redone with --retry-errors; a 404 or a 422 is not."""
    emulator, url = served
    source = tmp_path / "in.txt"
    source.write_text(f"{KNOWN[0]}\n{KNOWN[1]}\n418166096\n", "utf-8")
    out = tmp_path / "out.jsonl"

    def line(siren: str, status: str, error: dict[str, Any]) -> str:
        return json.dumps(
            {"input": siren, "operation": UL, "index": 0, "status": status, "error": error}
        )

    out.write_text(
        line(KNOWN[0], "error", {"type": "ProviderError", "http_status": 502})
        + "\n"
        + line(KNOWN[1], "error", {"type": "ValidationError", "http_status": 422})
        + "\n"
        + line("418166096", "not_found", {"type": "NotFoundError", "http_status": 404})
        + "\n",
        "utf-8",
    )
    args = ["batch", UL, "--input", str(source), "--output", str(out)]
    plain = cli(*args, environ=env(url))
    assert 1 == plain.returncode  # the error lines stand
    assert 0 == len(emulator.requests)
    again = cli(*args, "--retry-errors", environ=env(url))
    assert 1 == again.returncode, again.stderr  # the 422 is still there
    assert [f"/v4/insee/sirene/unites_legales/{KNOWN[0]}"] == [r.path for r in emulator.requests]
    statuses = {entry["input"]: entry["status"] for entry in lines_of(out)}
    assert {KNOWN[0]: "ok", KNOWN[1]: "error", "418166096": "not_found"} == statuses
    assert 3 == len(lines_of(out))


def test_call_list_alone_and_python_names(served: tuple[Emulator, str]) -> None:
    """`call --list` needs no operation; `insee.unites_legales` names the v4 operation."""
    _, url = served
    listed = cli("call", "--list", environ=env(API_ENTREPRISE_TOKEN=""))
    assert 0 == listed.returncode, listed.stderr
    rows = dict(line.split("\t") for line in listed.stdout.splitlines() if "\t" in line)
    assert "insee.unites_legales" == rows[UL]
    done = cli("call", "insee.unites_legales", KNOWN[0], environ=env(url))
    assert 0 == done.returncode, done.stderr
    assert KNOWN[0] == json.loads(done.stdout)["data"]["siren"]
    nothing = cli("call", environ=env(url))
    assert 2 == nothing.returncode
    assert 1 == len(nothing.stderr.splitlines())


def test_bad_options_are_one_line_in_every_subcommand(tmp_path: pathlib.Path) -> None:
    """argparse's usage block is replaced by one line; bad values are exit 2 or 3."""
    for args, code in [
        (["batch", UL, "--input"], 2),
        (["batch", UL, "--input", "x", "--output", "y", "--concurrency", "many"], 2),
        (["call", UL, "--nope"], 2),
        (["privileges", "--recipient", "x"], 2),
        (["emulator", "--period", "-1"], 3),
        (["emulator", "--share-drifted", "2"], 3),
        (["demo", "--calls", "0"], 3),
        (["nothing"], 2),
    ]:
        done = cli(*args, environ=env("http://127.0.0.1:9"))
        assert code == done.returncode, (args, done.stderr)
        assert 1 == len(done.stderr.splitlines()), (args, done.stderr)
        assert "Traceback" not in done.stderr
    bad = tmp_path / "in.txt"
    bad.write_bytes(b"\xff\xfe\x00 not text")
    done = cli("batch", UL, "--input", str(bad), "--output", str(tmp_path / "o"), environ=env())
    assert 3 == done.returncode
    assert f"apientreprise: {bad}: not UTF-8 text\n" == done.stderr


def test_progress_lines_off_a_terminal_and_whole_privileges_when_piped(
    served: tuple[Emulator, str], tmp_path: pathlib.Path
) -> None:
    """Piped (cron): progress lines every N %; privileges one whole id a line."""
    _, url = served
    source = tmp_path / "in.txt"
    source.write_text("\n".join([KNOWN[0], KNOWN[1], "418166096", "12345678X"]) + "\n", "utf-8")
    out = tmp_path / "out.jsonl"
    done = cli(
        "batch", UL, "--input", str(source), "--output", str(out), "--progress-every", "50%",
        environ=env(url),
    )  # fmt: skip
    progress = [line for line in done.stdout.splitlines() if line.startswith("batch: ")]
    assert 2 == len(progress), done.stdout
    assert progress[-1].startswith("batch: 4/4 (100%) done")
    assert "invalid 1, errors 0" in progress[-1]
    listed = cli("privileges", environ=env(url, COLUMNS="20"))
    assert 0 == listed.returncode
    assert "…" not in listed.stdout
    assert UL in listed.stdout.splitlines()
