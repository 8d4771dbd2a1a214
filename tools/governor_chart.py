"""Draw docs/img/governor.svg: 1,000 calls through the governor, as the emulator saw them.

A batch of 1,000 SIRENs runs against the emulator (JSON limit 250 calls per
60 s) on trio's mock clock, so four simulated minutes take a second. The chart
shows, second by second, how many calls the server's current window has
counted so far beside the limit, and the calls sent so far. Run from the repository root::

    python tools/governor_chart.py
"""

from __future__ import annotations

import pathlib
from typing import Any

import trio
import trio.testing

from apientreprise_async import AsyncClient, Governor, Limits
from apientreprise_async.backends import InMemoryBackend
from apientreprise_async.testing import Emulator, Faults

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img" / "governor.svg"
CALLS = 1000
PERIOD = 60.0
LIMIT = 250


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


async def simulate() -> list[tuple[float, float]]:
    """Per call of a 1,000-input batch, as the emulator saw it: arrival, and its window's start.

    Both in seconds from the first arrival.
    """
    emulator = Emulator(period=PERIOD, faults=Faults(latency=(0.05, 0.4)), seed=1)
    token = emulator.add_token("chart-token")
    governor = Governor(Limits(period=PERIOD), backend=InMemoryBackend())
    sirens = [luhn(f"{40_000_000 + 7919 * n:08d}") for n in range(CALLS)]
    async with (
        AsyncClient(
            token,
            transport=emulator.transport(),
            governor=governor,
            recipient="13002526500013",
            context="chart",
            object="governor",
        ) as client,
        client.batch("api_entreprise_v4_insee_unites_legales", sirens) as outcomes,
    ):
        async for _ in outcomes:
            pass
    first = emulator.requests[0]
    return [
        (r.monotonic - first.monotonic, (r.window or r.epoch) - first.epoch)
        for r in emulator.requests
    ]


def svg(calls: list[tuple[float, float]]) -> str:
    """The chart as SVG text (no plotting library needed)."""
    width, height, left, bottom, top = 720, 320, 60, 40, 20
    times = [t for t, _ in calls]
    end = max(times) + PERIOD
    step = 0.25  # fine enough to catch any window's count, not only whole seconds
    samples = [i * step for i in range(int(end / step) + 1)]
    # What the server's window open at s has counted by s.
    window = [sum(1 for t, w in calls if w <= s < w + PERIOD and t <= s) for s in samples]
    sent = [sum(1 for t in times if t <= s) for s in samples]
    seconds = int(end) + 1
    y_max = 1100

    def x(s: float) -> float:
        return left + (width - left - 20) * s / end

    def y(v: float) -> float:
        return top + (height - top - bottom) * (1 - v / y_max)

    def path(values: list[int]) -> str:
        return " ".join(
            f"{'M' if i == 0 else 'L'}{x(samples[i]):.1f},{y(v):.1f}" for i, v in enumerate(values)
        )

    parts: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    for v in range(0, y_max + 1, 250):
        parts.append(
            f'<line x1="{left}" x2="{width - 20}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v}</text>'
        )
    for s in range(0, seconds, 60):
        parts.append(
            f'<line x1="{x(s):.1f}" x2="{x(s):.1f}" y1="{top}" y2="{height - bottom}" '
            'stroke="#eee"/>'
            f'<text x="{x(s):.1f}" y="{height - bottom + 16}" text-anchor="middle">{s} s</text>'
        )
    parts += [
        f'<line x1="{left}" x2="{width - 20}" y1="{y(LIMIT):.1f}" y2="{y(LIMIT):.1f}" '
        'stroke="#c62828" stroke-dasharray="6 4"/>',
        f'<path d="{path(sent)}" fill="none" stroke="#1565c0" stroke-width="2"/>',
        f'<path d="{path(window)}" fill="none" stroke="#2e7d32" stroke-width="2"/>',
        f'<text x="{left + 8}" y="{y(LIMIT) - 6:.1f}" fill="#c62828">'
        f"limit: {LIMIT} per 60 s</text>",
        f'<text x="{x(end * 0.55):.1f}" y="{y(sent[-1]) + 18:.1f}" fill="#1565c0">'
        f"calls sent so far ({len(times):,})</text>",
        f'<text x="{x(end * 0.55):.1f}" y="{y(max(window)) + 32:.1f}" fill="#2e7d32">'
        f"calls in the server's current window (at most {max(window)})</text>",
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def main() -> None:
    """Simulate, draw, write."""
    clock: Any = trio.testing.MockClock(autojump_threshold=0)
    calls = trio.run(simulate, clock=clock)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(svg(calls), "utf-8")
    print(f"{OUT.relative_to(ROOT)}: {len(calls)} calls over {max(t for t, _ in calls):.0f} s")


if __name__ == "__main__":
    main()
