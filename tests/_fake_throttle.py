"""A scripted server that throttles like API Entreprise, for governor tests in virtual time.

It counts calls when they *arrive* (after the upward latency), in fixed
windows per (token, server bucket) and per IP, either aligned to the clock
(Rack::Attack) or opened by a first call (the public usage rules), and answers
with ``RateLimit-*`` headers, a 429 and ``Retry-After`` past the limit. It
records what a ban would be based on: arrivals over the IP ceiling, and calls
sent into a bucket while the client knew it was paused.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from email.utils import formatdate
from typing import Any

import anyio
import attrs

from apientreprise_async._catalogue import Endpoint
from apientreprise_async._governor import Governor

#: Virtual epoch: the wall clock the server and the governor agree on is this plus the anyio clock.
EPOCH = 1_700_000_000.0


def wall_clock() -> float:
    """The wall clock of the fake world (virtual time shifted to an epoch)."""
    return EPOCH + anyio.current_time()


def json_endpoint(
    operation_id: str = "op_json", group: str = "json_resources_entreprise"
) -> Endpoint:
    """A JSON operation of the shared group (or another one)."""
    return Endpoint(
        operation_id=operation_id,
        path=f"/v3/{operation_id}",
        provider="test",
        version=3,
        rate_group=group,
    )


@attrs.define
class _Window:
    start: float
    end: float
    count: int = 0


@attrs.define
class FakeServer:
    """The server side of the fake world.

    Args:
        buckets: server bucket name -> limit per period.
        route: operation id -> server bucket name (default: the endpoint's group).
        aligned: clock-aligned windows if true, else a window opens at the first call.
        latency: returns (up, down) seconds for one call: up before the server
            counts it (the network), down after (the provider, then the network).
        clock_offset: seconds the server's clock runs ahead of ours (negative:
            behind); its aligned windows and ``RateLimit-Reset`` follow it.
        date: send a ``Date`` header (whole seconds, on the server's clock).
    """

    buckets: Mapping[str, int]
    period: float = 60.0
    ip_limit: int = 1000
    aligned: bool = True
    route: Mapping[str, str] = attrs.field(factory=dict)
    latency: Callable[[], tuple[float, float]] = lambda: (0.0, 0.0)
    clock_offset: float = 0.0
    date: bool = False
    windows: dict[tuple[str, ...], _Window] = attrs.field(factory=dict)
    ok: int = 0
    rejected: int = 0
    rejected_per_window: Counter[tuple[str, int]] = attrs.field(factory=Counter)
    ip_overflows: int = 0
    sent_while_paused: int = 0
    pauses: dict[tuple[str, str], float] = attrs.field(factory=dict)
    window_ids: set[tuple[str, int]] = attrs.field(factory=set)
    arrivals: list[float] = attrs.field(factory=list)

    def _window(self, key: tuple[str, ...], now: float) -> _Window:
        """The window counting a call arriving ``now`` (times on our clock)."""
        window = self.windows.get(key)
        if window is None or now >= window.end:
            if self.aligned:
                # Aligned on the server's clock, which is ours plus the offset.
                server = now + self.clock_offset
                start = math.floor(server / self.period) * self.period - self.clock_offset
                if start + self.period <= now:  # float rounding at a boundary
                    start += self.period
            else:
                start = now
            window = self.windows[key] = _Window(start, start + self.period)
        return window

    def server_epoch(self, now: float) -> float:
        """The server's wall clock at our ``now``."""
        return EPOCH + now + self.clock_offset

    def arrive(self, token: str, operation_id: str, group: str) -> tuple[int, dict[str, str]]:
        """Count one arriving call and answer it (status, headers)."""
        now = anyio.current_time()
        self.arrivals.append(now)
        ip = self._window(("ip",), now)
        ip.count += 1
        if ip.count > self.ip_limit:
            self.ip_overflows += 1
        name = self.route.get(operation_id, group)
        limit = self.buckets[name]
        window = self._window((token, name), now)
        window.count += 1
        self.window_ids.add((f"{token}/{name}", round(window.start / self.period * 1000)))
        headers = {
            "ratelimit-limit": str(limit),
            "ratelimit-remaining": str(max(0, limit - window.count)),
            # Rounded up, as a server must (a reset announced early invites a 429).
            "ratelimit-reset": f"{math.ceil(self.server_epoch(window.end) * 1000) / 1000:.3f}",
        }
        if self.date:
            headers["date"] = formatdate(math.floor(self.server_epoch(now)), usegmt=True)
        if window.count > limit:
            self.rejected += 1
            self.rejected_per_window[(f"{token}/{name}", round(window.start * 1000))] += 1
            headers["retry-after"] = f"{window.end - now:.3f}"
            return 429, headers
        self.ok += 1
        return 200, headers

    def external(self, token: str, name: str) -> int:
        """One call by another program using the same token (no governor)."""
        now = anyio.current_time()
        window = self._window((token, name), now)
        window.count += 1
        return 200 if window.count <= self.buckets[name] else 429

    async def call(
        self,
        governor: Governor,
        token: str,
        endpoint: Endpoint,
        *,
        max_wait: float | None = None,
        new_task: bool = False,
    ) -> int:
        """One call through the governor, as the client makes it."""
        async with governor.permit(token, endpoint, max_wait=max_wait) as permit:
            if new_task:
                status = 0
                result: dict[str, Any] = {}

                async def send() -> None:
                    result["status"] = await self._send(permit, token, endpoint)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(send)
                status = result["status"]
            else:
                status = await self._send(permit, token, endpoint)
        return status

    async def _send(self, permit: Any, token: str, endpoint: Endpoint) -> int:
        permit.sending()
        now = anyio.current_time()
        if self.pauses.get((token, endpoint.bucket), -math.inf) > now:
            self.sent_while_paused += 1
        up, down = self.latency()
        await anyio.sleep(up)
        status, headers = self.arrive(token, endpoint.operation_id, endpoint.rate_group)
        await anyio.sleep(down)
        if status == 429:
            key = (token, endpoint.bucket)
            pause = anyio.current_time() + float(headers["retry-after"]) - down
            self.pauses[key] = max(self.pauses.get(key, -math.inf), pause)
        permit.observe(status, headers)
        return status
