"""Issue 3's acceptance: the governor against a scripted server, in virtual time.

Each scenario runs with clock-aligned windows (the server's Rack::Attack) and
with windows opened by a first call (the public usage rules).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import anyio
import pytest
from trio.testing import MockClock

from apientreprise_async._governor import Governor, Limits
from apientreprise_async.backends import InMemoryBackend

from ._fake_throttle import FakeServer, json_endpoint, wall_clock

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "first-call"]),
]

JSON = "json_resources_entreprise"


@pytest.fixture
def anyio_backend() -> Any:
    """Virtual time: hours of traffic in a few seconds."""
    return ("trio", {"clock": MockClock(autojump_threshold=0)})


def latency(seed: int, most: float) -> Any:
    """Random (up, down) network latency, each at most ``most`` seconds.

    Rounded to 10 ms: calls then share wake-up times, and the event loop runs
    far fewer turns for the same traffic.
    """
    rng = random.Random(seed)

    def draw() -> float:
        return round(rng.uniform(0, most), 2)

    return lambda: (draw(), draw())


def new_governor() -> Governor:
    """Default limits (real minute), a private backend, the fake world's wall clock."""
    return Governor(Limits(), backend=InMemoryBackend(), wall_clock=wall_clock)


async def run_pool(
    server: FakeServer, gov: Governor, jobs: list[tuple[str, Any]], workers: int, **kw: Any
) -> Counter[int]:
    """Run ``jobs`` (token, endpoint) with ``workers`` concurrent workers; count statuses."""
    statuses: Counter[int] = Counter()
    queue = list(reversed(jobs))

    async def worker() -> None:
        while queue:
            token, endpoint = queue.pop()
            statuses[await server.call(gov, token, endpoint, **kw)] += 1

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)
    return statuses


async def test_ten_thousand_calls_of_one_token_take_the_minimum_windows(aligned: bool) -> None:
    """10,000 JSON calls finish within ceil(10,000/250) + 1 windows, with zero 429."""
    server = FakeServer({JSON: 250}, aligned=aligned, latency=latency(1, 0.15))
    gov = new_governor()
    await anyio.sleep(17.3)  # start anywhere inside a clock minute
    endpoint = json_endpoint()
    statuses = await run_pool(server, gov, [("tok", endpoint)] * 10_000, workers=260)
    assert {200: 10_000} == dict(statuses)
    assert 0 == server.rejected
    assert len(server.window_ids) <= math.ceil(10_000 / 250) + 1
    assert 0 == server.ip_overflows


async def test_six_tokens_at_full_speed_never_pass_the_ip_ceiling(aligned: bool) -> None:
    """6 x 250 per minute wanted, 1000 allowed per IP: the IP bucket holds."""
    server = FakeServer({JSON: 250}, aligned=aligned, latency=latency(2, 0.15))
    gov = new_governor()
    endpoint = json_endpoint()
    jobs = [(f"token{i % 6}", endpoint) for i in range(3_000)]
    statuses = await run_pool(server, gov, jobs, workers=300)
    assert {200: 3_000} == dict(statuses)
    assert 0 == server.ip_overflows
    assert 0 == server.rejected
    # The IP ceiling, not the tokens, set the pace: 3,000 calls need 3 windows.
    assert anyio.current_time() >= 2 * 60.0


async def test_an_external_consumer_costs_at_most_one_429_per_window(aligned: bool) -> None:
    """Another program on the same token shows only through headers."""
    server = FakeServer({JSON: 250}, aligned=aligned, latency=latency(3, 0.15))
    gov = new_governor()
    endpoint = json_endpoint()
    done = False

    async def external() -> None:
        rng = random.Random(4)
        while not done:
            await anyio.sleep(rng.expovariate(1.0))  # about 60 calls a minute
            server.external("tok", JSON)

    async with anyio.create_task_group() as tg:
        tg.start_soon(external)
        statuses = await run_pool(server, gov, [("tok", endpoint)] * 3_000, workers=300)
        done = True
    assert 3_000 == statuses[200] + statuses[429]
    assert max(server.rejected_per_window.values(), default=0) <= 1
    assert 0 == server.sent_while_paused
    assert statuses[429] == gov.counters.rate_limited


async def test_a_wrongly_guessed_group_costs_at_most_one_429(aligned: bool) -> None:
    """An endpoint really limited to 5, thought to share the JSON 250: slow start saves it."""
    server = FakeServer(
        {JSON: 250, "own": 5}, aligned=aligned, route={"op_five": "own"}, latency=latency(5, 0.15)
    )
    gov = new_governor()
    five = json_endpoint("op_five")
    other = json_endpoint("op_other")
    jobs = [("tok", five if i % 2 else other) for i in range(60)]
    statuses = await run_pool(server, gov, jobs, workers=60)
    assert server.rejected <= 1
    assert 60 == statuses[200] + statuses[429]
    assert 0 == server.sent_while_paused


async def test_high_latency_sent_from_new_tasks_never_draws_a_429(aligned: bool) -> None:
    """Latency up to 20 % of the period, each request sent from a new task: zero 429."""
    server = FakeServer({JSON: 250}, aligned=aligned, latency=latency(6, 6.0))
    gov = new_governor()
    endpoint = json_endpoint()
    statuses = await run_pool(server, gov, [("tok", endpoint)] * 2_000, workers=400, new_task=True)
    assert {200: 2_000} == dict(statuses)
    assert 0 == server.rejected


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(1.0, 1), (3.0, 1), (10 / 3, 1), (0.4, 10)],
    ids=["1-per-s", "3-per-s", "80-percent", "bursts-of-10"],
)
async def test_any_external_rate_costs_at_most_one_429_per_window(
    aligned: bool, rate: float, burst: int
) -> None:
    """Another program at a steady rate (up to 80 % of the limit) or in bursts.

    We start in the middle of a window the other program already uses; each
    window it costs at most one 429, followed by a pause, and we still get
    nearly all of what the other program leaves.
    """
    server = FakeServer({JSON: 250}, aligned=aligned, latency=latency(7, 0.15))
    gov = new_governor()
    endpoint = json_endpoint()
    done = False
    theirs: Counter[int] = Counter()

    async def external() -> None:
        rng = random.Random(8)
        while not done:
            await anyio.sleep(rng.expovariate(rate))
            for _ in range(burst):
                theirs[server.external("tok", JSON)] += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(external)
        await anyio.sleep(30.0)
        start = anyio.current_time()
        statuses = await run_pool(server, gov, [("tok", endpoint)] * 3_000, workers=300)
        done = True
        windows = (anyio.current_time() - start) / 60.0
    assert 3_000 == statuses[200] + statuses[429]
    assert max(server.rejected_per_window.values(), default=0) <= 1
    assert 0 == server.sent_while_paused
    assert statuses[429] == gov.counters.rate_limited
    # What the other program did not use, and how much of it we took.
    left = 250 * windows - theirs[200]
    share = statuses[200] / left
    print(
        f"\n{'aligned' if aligned else 'first-call'} rate={rate * burst:.2f}/s: "
        f"429s={statuses[429]} in {windows:.1f} windows, ours={statuses[200]}, "
        f"theirs={theirs[200]} ok + {theirs[429]} refused, "
        f"share of the limit {statuses[200] / (250 * windows):.3f}, "
        f"of what they left {share:.3f}"
    )
    assert share >= 0.9
