"""Rate limits, windows, 429, bans, IP ceiling and 409, in virtual time (trio MockClock)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import anyio
import httpx
import pytest

from apientreprise_async.testing import Emulator, Faults

from .conftest import RECIPIENT, TOKEN

pytestmark = pytest.mark.anyio

UL = "/v4/insee/sirene/unites_legales/832147656"
VIES = "/v3/european_commission/unites_legales/832147656/numero_tva"
TEN = dt.datetime(2025, 1, 15, 9, 0, tzinfo=dt.UTC).timestamp()  # 10:00:00 in Paris
QUERY = {"context": "tests", "recipient": RECIPIENT, "object": "limits"}


@pytest.fixture
def anyio_backend() -> Any:
    """Every test here runs on trio with a clock that jumps over sleeps."""
    from trio.testing import MockClock

    return ("trio", {"clock": MockClock(autojump_threshold=0)})


def http(
    emulator: Emulator, token: str = TOKEN, *, client_ip: str = "127.0.0.1"
) -> httpx.AsyncClient:
    """A raw client to the emulator with a 5 s read timeout."""
    return httpx.AsyncClient(
        transport=emulator.transport(client_ip=client_ip),
        base_url="https://emulator.test",
        headers={"Authorization": f"Bearer {token}"},
        timeout=5.0,
    )


def rate(response: httpx.Response) -> tuple[str, str, str]:
    """``RateLimit-Limit``, ``-Remaining`` and ``-Reset`` of an answer."""
    h = response.headers
    return h["RateLimit-Limit"], h["RateLimit-Remaining"], h["RateLimit-Reset"]


async def test_usage_rules_worked_example_first_call() -> None:
    """Limit 50; calls at 10:00:00, 10:00:20, 10:00:30 give Remaining 47, Reset 10:01:00."""
    emulator = Emulator(windows="first_call", start_epoch=TEN)
    emulator.add_token(TOKEN, limits={"json_resources_entreprise": 50})
    async with http(emulator) as client:
        await client.get(UL, params=QUERY)
        await anyio.sleep(20)
        await client.get(UL, params=QUERY)
        await anyio.sleep(10)
        third = await client.get(UL, params=QUERY)
    assert ("50", "47", str(int(TEN) + 60)) == rate(third)
    assert [TEN, TEN + 20, TEN + 30] == [r.epoch for r in emulator.requests]


async def test_first_call_window_is_not_aligned() -> None:
    """In first-call mode a window opened at 10:00:30 still runs at 10:01:10."""
    emulator = Emulator(windows="first_call", start_epoch=TEN + 30)
    emulator.add_token(TOKEN)
    async with http(emulator) as client:
        await client.get(UL, params=QUERY)
        await anyio.sleep(40)
        later = await client.get(UL, params=QUERY)
    assert ("250", "248", str(int(TEN) + 90)) == rate(later)


async def test_clock_aligned_windows_by_default() -> None:
    """By default a call at 10:00:30 ends its window at 10:01:00, and 10:01:00 starts anew."""
    emulator = Emulator(start_epoch=TEN + 30)
    emulator.add_token(TOKEN)
    async with http(emulator) as client:
        first = await client.get(UL, params=QUERY)
        second = await client.get(UL, params=QUERY)
        await anyio.sleep(30)
        third = await client.get(UL, params=QUERY)
    assert ("250", "249", str(int(TEN) + 60)) == rate(first)
    assert ("250", "248", str(int(TEN) + 60)) == rate(second)
    assert ("250", "249", str(int(TEN) + 120)) == rate(third)


async def test_429_with_retry_after_then_new_window() -> None:
    """Past the limit: 429 with Retry-After to the window's end; after it, a fresh window."""
    emulator = Emulator(start_epoch=TEN + 15)
    emulator.add_token(TOKEN, limits={"json_resources_entreprise": 3})
    async with http(emulator) as client:
        answers = [await client.get(UL, params=QUERY) for _ in range(4)]
        await anyio.sleep(float(answers[-1].headers["Retry-After"]))
        after = await client.get(UL, params=QUERY)
    assert [200, 200, 200, 429] == [a.status_code for a in answers]
    refused = answers[-1]
    assert "00429" == refused.json()["errors"][0]["code"]
    assert "45" == refused.headers["Retry-After"]
    assert ("3", "0", str(int(TEN) + 60)) == rate(refused)
    assert 200 == after.status_code
    assert ("3", "2", str(int(TEN) + 120)) == rate(after)


async def test_new_first_call_window_after_expiry() -> None:
    """In first-call mode the first call after a window ends opens the next one."""
    emulator = Emulator(windows="first_call", start_epoch=TEN)
    emulator.add_token(TOKEN, limits={"json_resources_entreprise": 2})
    async with http(emulator) as client:
        await client.get(UL, params=QUERY)
        await client.get(UL, params=QUERY)
        await anyio.sleep(65)
        fresh = await client.get(UL, params=QUERY)
    assert ("2", "1", str(int(TEN) + 125)) == rate(fresh)


async def test_scaled_period_sends_decimals() -> None:
    """At ``period=1.0`` Reset and Retry-After carry decimals; limits stay per period."""
    emulator = Emulator(period=1.0, windows="first_call", start_epoch=TEN + 0.25)
    emulator.add_token(TOKEN, limits={"json_resources_entreprise": 1})
    async with http(emulator) as client:
        ok = await client.get(UL, params=QUERY)
        await anyio.sleep(0.5)
        refused = await client.get(UL, params=QUERY)
    assert ("1", "0", f"{int(TEN) + 1}.25") == rate(ok)
    assert "0.5" == refused.headers["Retry-After"]


async def test_ban_on_ignored_429() -> None:
    """Calling a bucket again before Retry-After ends bans the IP: no answer for 12 h."""
    emulator = Emulator(period=1.0, start_epoch=TEN)
    emulator.add_token(TOKEN, limits={"json_resources_entreprise": 2})
    other_token = emulator.add_token("other-token")
    async with http(emulator) as client:
        statuses = [(await client.get(UL, params=QUERY)).status_code for _ in range(3)]
        await anyio.sleep(0.1)
        with pytest.raises(httpx.ReadTimeout):
            await client.get(UL, params=QUERY)
    async with http(emulator, other_token) as other:
        # Every token of the banned IP is blocked, on every endpoint.
        with pytest.raises(httpx.ReadTimeout):
            await other.get(VIES, params=QUERY)
    async with http(emulator, other_token, client_ip="10.0.0.2") as elsewhere:
        assert 200 == (await elsewhere.get(VIES, params=QUERY)).status_code
    assert [200, 200, 429] == statuses
    until = emulator.banned_until("127.0.0.1")
    assert until is not None
    assert 720 == pytest.approx(until - emulator.epoch(), abs=12)
    await anyio.sleep(720)
    assert emulator.banned_until("127.0.0.1") is None
    async with http(emulator) as client:
        assert 200 == (await client.get(UL, params=QUERY)).status_code
    banned = [r for r in emulator.requests if r.outcome == "banned"]
    assert [None, None] == [r.status for r in banned]


async def test_concurrent_429s_are_not_a_ban() -> None:
    """Calls that arrive with the first 429 could not have seen it: 429, not a ban."""
    emulator = Emulator(start_epoch=TEN)
    emulator.add_token(TOKEN, limits={"json_resources_entreprise": 2})
    statuses: list[int] = []
    async with http(emulator) as client:

        async def one() -> None:
            statuses.append((await client.get(UL, params=QUERY)).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(one)
    assert [200, 200, 429, 429] == sorted(statuses)
    assert emulator.banned_until() is None


async def test_ip_ceiling_across_tokens() -> None:
    """1000 calls a minute from one IP pass; the 1001st, whatever the token, gets banned."""
    emulator = Emulator(start_epoch=TEN)
    tokens = [emulator.add_token(f"token-{i}") for i in range(5)]
    for token in tokens[:4]:
        async with http(emulator, token) as client:
            for _ in range(250):
                response = await client.get(VIES, params=QUERY)
                assert 200 == response.status_code
    async with http(emulator, tokens[4]) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(VIES, params=QUERY)
    assert 1000 == emulator.max_calls_in_any_window(client_ip="127.0.0.1") - 1
    assert emulator.banned_until() is not None


async def test_409_while_identical_call_in_flight() -> None:
    """An identical call during a slow one gets 409; other parameters do not."""
    emulator = Emulator(start_epoch=TEN, faults=Faults(latency=2.0))
    emulator.add_token(TOKEN)
    answers: dict[str, int] = {}
    async with http(emulator) as client:

        async def call(name: str, path: str, delay: float) -> None:
            await anyio.sleep(delay)
            answers[name] = (await client.get(path, params=QUERY)).status_code

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "first", UL, 0)
            tg.start_soon(call, "duplicate", UL, 0.5)
            tg.start_soon(call, "other", VIES, 0.5)
            tg.start_soon(call, "after", UL, 2.5)
    assert {"first": 200, "duplicate": 409, "other": 200, "after": 200} == answers
    conflict = emulator.calls(status=409)
    assert 1 == len(conflict)


async def test_slow_provider_gets_504_after_ten_seconds() -> None:
    """A provider slower than 10 s is answered 504 'hors-délai' at 10 s."""
    emulator = Emulator(start_epoch=TEN, faults=Faults(latency=30.0))
    emulator.add_token(TOKEN)
    async with http(emulator) as client:
        client.timeout = httpx.Timeout(15.0)
        started = anyio.current_time()
        response = await client.get(UL, params=QUERY)
        elapsed = anyio.current_time() - started
    assert (504, "01002") == (response.status_code, response.json()["errors"][0]["code"])
    assert 10.0 == pytest.approx(elapsed)


async def test_document_links_expire_and_downloads_have_a_bucket() -> None:
    """Downloads draw from the proxied_files bucket; links die after their lifetime."""
    emulator = Emulator(start_epoch=TEN)
    emulator.add_token(TOKEN, limits={"proxied_files": 2})
    async with http(emulator) as client:
        doc = await client.get(
            "/v3/urssaf/unites_legales/832147656/attestation_vigilance", params=QUERY
        )
        url = doc.json()["data"]["document_url"]
        expires_in = doc.json()["data"]["expires_in"]
        downloads = [(await client.get(url)).status_code for _ in range(3)]
        await anyio.sleep(expires_in + 1)
        expired = await client.get(url)
    assert [200, 200, 429] == downloads
    assert 86400 == expires_in
    assert 404 == expired.status_code


async def test_max_calls_in_any_window() -> None:
    """The helper finds the densest span of arrivals, across window boundaries."""
    emulator = Emulator(start_epoch=TEN + 50)
    emulator.add_token(TOKEN)
    async with http(emulator) as client:
        for _ in range(5):
            await client.get(UL, params=QUERY)
        await anyio.sleep(15)  # crosses the 10:01:00 boundary
        for _ in range(5):
            await client.get(UL, params=QUERY)
        await anyio.sleep(60)
        await client.get(UL, params=QUERY)
    assert 10 == emulator.max_calls_in_any_window(token=TOKEN)
    assert 5 == emulator.max_calls_in_any_window(10.0)
    assert 0 == emulator.max_calls_in_any_window(token="someone-else")
    # The server's own windows: 5 before the boundary, 5 after, 1 a minute later.
    assert 5 == emulator.max_calls_in_a_window(token=TOKEN)
    assert [TEN, TEN + 60, TEN + 120] == sorted({r.window for r in emulator.requests})


async def test_a_server_clock_behind_ours_moves_its_windows_reset_and_date() -> None:
    """clock_offset=-20: at our 10:00:50 the server reads 10:00:30; its window ends at 10:01:00."""
    emulator = Emulator(start_epoch=TEN + 50, clock_offset=-20.0)
    emulator.add_token(TOKEN)
    async with http(emulator) as client:
        answer = await client.get(UL, params=QUERY)
        await anyio.sleep(35)  # the server's 10:01:05: a new window
        later = await client.get(UL, params=QUERY)
    assert ("250", "249", str(int(TEN) + 60)) == rate(answer)
    assert ("250", "249", str(int(TEN) + 120)) == rate(later)
    assert "Wed, 15 Jan 2025 09:00:30 GMT" == answer.headers["Date"]
    assert [TEN + 30, TEN + 65] == [r.epoch for r in emulator.requests]


async def test_uplink_delays_the_count_and_latency_the_answer() -> None:
    """Faults(uplink=1): counted 1 s after the send; Faults(latency=2): answered 2 s after that."""
    emulator = Emulator(start_epoch=TEN, faults=Faults(uplink=1.0, latency=2.0))
    emulator.add_token(TOKEN)
    async with http(emulator) as client:
        sent = anyio.current_time()
        await client.get(UL, params=QUERY)
        answered = anyio.current_time()
    assert [sent + 1.0] == [r.monotonic for r in emulator.requests]
    assert pytest.approx(sent + 3.0) == answered
