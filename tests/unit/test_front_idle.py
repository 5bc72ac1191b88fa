"""`synthdet serve --idle-stop-minutes`: the front counts prediction requests, nothing else.

The front runs for real on loopback (no TorchServe behind it: a prediction then gets
the JSON 503, and still counts, as a refused frame does on nginx); its clock is a
stand-in the test moves, so no test waits for minutes to pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from synthdet.front import Front
from tests.support.refusals import two_free_ports


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def served() -> Iterator[tuple[Front, Clock, str]]:
    port, nothing = two_free_ports()
    clock = Clock()
    front = Front(
        upstream=f"http://127.0.0.1:{nothing}",
        models=["synthdet"],
        host="127.0.0.1",
        port=port,
        max_body_bytes=1_000_000,
        response_timeout_s=5,
        clock=clock,
    )
    front.start()
    try:
        yield front, clock, f"http://127.0.0.1:{port}"
    finally:
        front.stop()


def test_the_clock_starts_with_the_server(served: tuple[Front, Clock, str]) -> None:
    front, clock, _ = served
    assert front.idle_s() == 0
    clock.now += 90
    assert front.idle_s() == 90


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_a_prediction_request_resets_it(served: tuple[Front, Clock, str], method: str) -> None:
    front, clock, base = served
    clock.now += 600
    answer = httpx.request(method, f"{base}/predictions/synthdet", content=b"\xff\xd8jpeg", timeout=10)
    assert answer.status_code == 503  # no TorchServe: busy, but it was a frame
    assert front.idle_s() == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/ping"),
        ("GET", "/predictions/synthdet"),  # the viewer page: frames count, the page alone does not
        ("POST", "/predictions/nope"),
        ("GET", "/somewhere"),
        ("DELETE", "/predictions/synthdet"),
    ],
)
def test_nothing_else_does(served: tuple[Front, Clock, str], method: str, path: str) -> None:
    front, clock, base = served
    clock.now += 600
    httpx.request(method, f"{base}{path}", timeout=10)
    assert front.idle_s() == 600
