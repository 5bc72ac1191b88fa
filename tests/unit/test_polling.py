"""serving.polling: waiting on a condition until a deadline, the one helper every wait uses."""

from __future__ import annotations

import time

import pytest

from serving.polling import Retrying, poll, retry


def test_poll_returns_the_answer_that_satisfied_it() -> None:
    answers = iter([3, 2, 1, 0])
    assert poll(lambda: next(answers), lambda n: n == 1, timeout_s=5, every_s=0.01) == (True, 1)


def test_poll_says_when_time_ran_out_and_what_it_saw_last() -> None:
    calls: list[float] = []

    def check() -> int:
        calls.append(time.monotonic())
        return len(calls)

    started = time.monotonic()
    done, last = poll(check, lambda n: n < 0, timeout_s=0.2, every_s=0.05)
    assert done is False and last == len(calls) and len(calls) >= 3
    assert 0.2 <= time.monotonic() - started < 2
    # Even with no time left, it looks once.
    assert poll(lambda: "x", lambda _: False, timeout_s=-1, every_s=0.05) == (False, "x")


def test_poll_stops_at_once_when_the_check_raises() -> None:
    """A process that died while we waited for it is an answer: no more waiting."""
    calls = []

    def check() -> bool:
        calls.append(1)
        raise RuntimeError("TorchServe exited")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited"):
        poll(check, lambda ok: ok, timeout_s=30, every_s=0.01)
    assert calls == [1] and time.monotonic() - started < 1


class NotYet(Exception):
    pass


def test_retry_returns_once_the_attempt_stops_raising_and_reports_each_wait() -> None:
    attempts = iter([NotYet("one"), NotYet("two"), "done"])
    seen: list[Retrying] = []

    def attempt() -> str:
        outcome = next(attempts)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert retry(attempt, timeout_s=5, every_s=0.01, when=NotYet, on_retry=seen.append) == "done"
    assert [(r.attempt, str(r.error), r.wait_s) for r in seen] == [(1, "one", 0.01), (2, "two", 0.01)]


def test_retry_raises_the_last_error_when_time_is_up_and_others_at_once() -> None:
    count = 0

    def failing() -> None:
        nonlocal count
        count += 1
        raise NotYet(f"attempt {count}")

    with pytest.raises(NotYet, match=r"attempt \d+") as err:
        retry(failing, timeout_s=0.1, every_s=0.02, when=NotYet)
    assert str(err.value) == f"attempt {count}" and count >= 2
    count = 0
    with pytest.raises(NotYet, match="attempt 1"):
        retry(failing, timeout_s=5, every_s=0.01, when=KeyError)  # not worth retrying
    # A predicate chooses, too.
    count = 0
    with pytest.raises(NotYet, match="attempt 3"):
        retry(failing, timeout_s=5, every_s=0.01, when=lambda exc: count < 3)


def test_retry_backs_off_exponentially_up_to_a_ceiling() -> None:
    waits: list[float] = []
    attempts = iter(range(6))

    def attempt() -> int:
        n = next(attempts)
        if n < 5:
            raise NotYet
        return n

    retry(
        attempt,
        timeout_s=5,
        every_s=0.01,
        max_every_s=0.04,
        when=NotYet,
        on_retry=lambda r: waits.append(r.wait_s),
    )
    assert waits == [0.01, 0.02, 0.04, 0.04, 0.04]
