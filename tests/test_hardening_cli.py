"""The command line never repeats a token, and reads token files as editors write them."""

from __future__ import annotations

import pathlib

import pytest

from apientreprise_async.testing import COMPANIES, Emulator

from .conftest import TOKEN
from .test_cli import cli, env, served  # noqa: F401  (fixture)

UL = "api_entreprise_v4_insee_unites_legales"


def leaked(output: str) -> list[str]:
    """Pieces of the token (24 characters or more) found in ``output``."""
    return [TOKEN[i : i + 24] for i in range(0, len(TOKEN) - 24, 8) if TOKEN[i : i + 24] in output]


@pytest.mark.parametrize(
    "args",
    [
        (TOKEN,),  # argparse: invalid choice of command
        ("privileges", TOKEN),  # unrecognized arguments
        ("call", UL, "418166096", TOKEN),  # one positional too many
        ("demo", "--calls", TOKEN),  # invalid int value
        ("call", UL, f"--env={TOKEN}"),  # a value glued to its option
    ],
    ids=["command", "unrecognized", "extra_positional", "int_value", "glued"],
)
def test_a_token_pasted_on_the_command_line_is_never_echoed(args: tuple[str, ...]) -> None:
    done = cli(*args, environ=env("http://127.0.0.1:9"), timeout=30)
    assert 2 == done.returncode, done.stderr
    assert "characters, not shown" in done.stderr
    assert [] == leaked(done.stdout + done.stderr)
    assert "Traceback" not in done.stderr


def test_a_token_given_as_the_operation_is_not_echoed() -> None:
    """Past argparse, the "unknown operation" message hides it too."""
    done = cli("call", TOKEN, environ=env("http://127.0.0.1:9"), timeout=30)
    assert 3 == done.returncode, done.stderr
    assert [] == leaked(done.stdout + done.stderr)


def test_a_token_file_with_a_byte_order_mark_works(
    served: tuple[Emulator, str],  # noqa: F811
    tmp_path: pathlib.Path,
) -> None:
    """Notepad's UTF-8 (BOM, CRLF) is read as the token it holds."""
    _, url = served
    token_file = tmp_path / "token.txt"
    token_file.write_bytes(b"\xef\xbb\xbf" + TOKEN.encode() + b"\r\n")
    done = cli(
        "call",
        UL,
        COMPANIES[0].siren,
        "--token-file",
        str(token_file),
        environ=env(url, API_ENTREPRISE_TOKEN=""),
    )
    assert 0 == done.returncode, done.stderr
    assert COMPANIES[0].siren in done.stdout


def test_a_token_file_with_a_control_character_is_refused_quietly(tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "token.txt"
    token_file.write_text(TOKEN[:30] + "\x00" + TOKEN[30:], "utf-8")
    done = cli(
        "privileges",
        "--token-file",
        str(token_file),
        environ=env("http://127.0.0.1:9", API_ENTREPRISE_TOKEN=""),
        timeout=30,
    )
    assert 3 == done.returncode, done.stderr
    assert "position 30" in done.stderr
    assert [] == leaked(done.stdout + done.stderr)
    assert "Traceback" not in done.stderr


def test_a_token_given_as_the_identifier_is_not_echoed() -> None:
    """The library's "not a valid SIREN" shows a long value by its first characters only."""
    done = cli("call", UL, TOKEN, environ=env("http://127.0.0.1:9"), timeout=30)
    assert 3 == done.returncode, done.stderr
    assert f"({len(TOKEN)} characters)" in done.stderr
    assert [] == leaked(done.stdout + done.stderr)
    assert TOKEN[:12] not in done.stdout + done.stderr
