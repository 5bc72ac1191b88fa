"""`synthdet bench`: load an endpoint the way a room full of SynthDet Viewers would.

Each simulated phone behaves like the app (docs/client-contract.md):
it captures a frame every 1/5 s, sends it as a 1280 px wide quality-75 JPEG with
`Content-Type: image/jpg` unless 5 of its requests are already in flight (then
the frame is dropped, as the app does), and gives each request 2 s in total.
The run is bounded: frames stop after `duration_s`, then the requests still in
flight get their timeout to finish.

Latency percentiles are over successful answers (2xx with a JSON array the app
would parse). Refusals (503 and 429: the server was busy and said so at once,
as it is designed to under load) are counted apart from timeouts and from
errors (anything else that went wrong); the app drops all three and sends its
next frame.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from serving.contract import (
    APP_CONTENT_TYPE,
    APP_TIMEOUT_S,
    APP_WIDTH,
    ContractError,
    make_test_jpeg,
    parse_like_app,
)

APP_FPS = 5.0
APP_MAX_IN_FLIGHT = 5
# The app's frames: 4:3 tablets and 19.5:9 phones (client contract).
APP_HEIGHTS = (960, 590)
# "Busy, try again": answered at once by a server protecting its deadline.
REFUSAL_STATUSES = (429, 503)
SAMPLES = 5  # enough to diagnose, never the whole run


@dataclass(frozen=True)
class BenchConfig:
    url: str
    phones: int = 1
    duration_s: float = 30.0
    timeout_s: float = APP_TIMEOUT_S
    fps: float = APP_FPS
    max_in_flight: int = APP_MAX_IN_FLIGHT
    heights: tuple[int, ...] = APP_HEIGHTS
    seed: int = 0


@dataclass
class Tally:
    """What happened so far; shared by every phone of a run (one event loop, no locks)."""

    latencies_ms: list[float] = field(default_factory=list)
    sent: int = 0
    timeouts: int = 0
    refused: int = 0
    errors: int = 0
    dropped_frames: int = 0
    error_samples: list[str] = field(default_factory=list)
    refusal_samples: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors += 1
        if message not in self.error_samples and len(self.error_samples) < SAMPLES:
            self.error_samples.append(message)

    def refusal(self, message: str) -> None:
        self.refused += 1
        if message not in self.refusal_samples and len(self.refusal_samples) < SAMPLES:
            self.refusal_samples.append(message)


@dataclass(frozen=True)
class BenchResult:
    phones: int
    duration_s: float
    timeout_s: float
    elapsed_s: float
    sent: int
    ok: int
    timeouts: int
    refused: int
    errors: int
    dropped_frames: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    throughput_rps: float
    error_samples: tuple[str, ...] = ()
    refusal_samples: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["error_samples"] = list(self.error_samples)
        data["refusal_samples"] = list(self.refusal_samples)
        for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "elapsed_s", "throughput_rps"):
            if data[key] is not None:
                data[key] = round(data[key], 3)
        return data


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation (numpy's default); None if empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def frame_times(start: float, fps: float, duration_s: float) -> list[float]:
    """When a phone captures its frames: every 1/fps from `start`, within the duration."""
    count = math.ceil(duration_s * fps - 1e-9)
    return [start + index / fps for index in range(count)]


def summarize(tally: Tally, config: BenchConfig, elapsed_s: float) -> BenchResult:
    latencies = tally.latencies_ms
    ok = len(latencies)
    return BenchResult(
        phones=config.phones,
        duration_s=config.duration_s,
        timeout_s=config.timeout_s,
        elapsed_s=elapsed_s,
        sent=tally.sent,
        ok=ok,
        timeouts=tally.timeouts,
        refused=tally.refused,
        errors=tally.errors,
        dropped_frames=tally.dropped_frames,
        p50_ms=percentile(latencies, 50),
        p90_ms=percentile(latencies, 90),
        p99_ms=percentile(latencies, 99),
        mean_ms=sum(latencies) / ok if ok else None,
        # Answers the app could use, per second of the whole run.
        throughput_rps=ok / elapsed_s if elapsed_s > 0 else 0.0,
        error_samples=tuple(tally.error_samples),
        refusal_samples=tuple(tally.refusal_samples),
    )


def app_frames(heights: Sequence[int], seed: int) -> list[bytes]:
    """A few distinct camera-like frames per size, encoded as the app does."""
    return [make_test_jpeg(APP_WIDTH, height, seed=seed + index) for height in heights for index in range(2)]


class Phone:
    """One simulated app: paced frames, a cap on requests in flight, a total timeout."""

    def __init__(self, config: BenchConfig, client: httpx.AsyncClient, tally: Tally, frames: list[bytes]):
        self.config = config
        self.client = client
        self.tally = tally
        self.frames = frames
        self.in_flight: set[asyncio.Task[None]] = set()

    def offer(self) -> bool:
        """A frame is captured: may it be sent now? (The app drops it when 5 are in flight.)"""
        if len(self.in_flight) >= self.config.max_in_flight:
            self.tally.dropped_frames += 1
            return False
        return True

    async def run(self, start: float) -> None:
        loop = asyncio.get_running_loop()
        for index, when in enumerate(frame_times(start, self.config.fps, self.config.duration_s)):
            await asyncio.sleep(max(0.0, when - loop.time()))
            if self.offer():
                task = asyncio.create_task(self.send(self.frames[index % len(self.frames)]))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)
        if self.in_flight:
            await asyncio.gather(*self.in_flight)

    async def send(self, frame: bytes) -> None:
        self.tally.sent += 1
        started = time.perf_counter()
        try:
            response = await asyncio.wait_for(
                self.client.post(self.config.url, content=frame, headers={"Content-Type": APP_CONTENT_TYPE}),
                timeout=self.config.timeout_s,
            )
        except (asyncio.TimeoutError, httpx.TimeoutException):
            self.tally.timeouts += 1
            return
        except httpx.HTTPError as err:
            self.tally.error(f"{type(err).__name__}: {err}")
            return
        latency_ms = (time.perf_counter() - started) * 1000
        self._judge(response, latency_ms)

    def _judge(self, response: httpx.Response, latency_ms: float) -> None:
        """Count the answer as the app would: 2xx and a JSON array, or dropped."""
        if response.status_code in REFUSAL_STATUSES:
            self.tally.refusal(f"HTTP {response.status_code}: {server_message(response)}")
            return
        if not response.is_success:
            self.tally.error(f"HTTP {response.status_code}: {server_message(response)}")
            return
        try:
            parse_like_app(response.content)
        except ContractError as err:
            self.tally.error(f"contract: {err}")
            return
        self.tally.latencies_ms.append(latency_ms)


def server_message(response: httpx.Response) -> str:
    """The server's own words: the `error` of a JSON body, else the body, whole."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or "(empty body)"
    if isinstance(body, dict) and isinstance(body.get("error") or body.get("message"), str):
        return str(body.get("error") or body.get("message"))
    return response.text.strip()


async def run_bench_async(
    config: BenchConfig, on_tick: Callable[[Tally, float], None] | None = None
) -> BenchResult:
    """Run every phone until its frames are spent and its last request has finished."""
    frames = app_frames(config.heights, config.seed)
    tally = Tally()
    jitter = random.Random(config.seed)
    limits = httpx.Limits(
        max_connections=config.phones * config.max_in_flight, max_keepalive_connections=None
    )
    # The total deadline is asyncio.wait_for's; httpx's own limits are looser so they never fire first.
    timeout = httpx.Timeout(config.timeout_s + 5)
    async with httpx.AsyncClient(verify=False, limits=limits, timeout=timeout) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        phones = [Phone(config, client, tally, frames) for _ in range(config.phones)]
        # Phones are not in step: each starts somewhere within the first frame interval.
        runs = [asyncio.create_task(phone.run(started + jitter.random() / config.fps)) for phone in phones]
        while not all(run.done() for run in runs):
            await asyncio.wait(runs, timeout=0.25)
            if on_tick:
                on_tick(tally, loop.time() - started)
        await asyncio.gather(*runs)
        elapsed = loop.time() - started
    return summarize(tally, config, elapsed)


def run_bench(config: BenchConfig, on_tick: Callable[[Tally, float], None] | None = None) -> BenchResult:
    if config.phones < 1 or config.duration_s <= 0 or config.timeout_s <= 0 or config.fps <= 0:
        raise ValueError("phones, duration, timeout and fps must be positive")
    return asyncio.run(run_bench_async(config, on_tick))
