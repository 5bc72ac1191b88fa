"""Waiting for something to happen: the one helper every loop that polls or retries uses.

Two shapes, both built on tenacity and both bounded by a deadline:

- `poll(check, done, ...)`: call `check` until `done(answer)`; the caller gets
  (done?, last answer) and decides what a timeout means. An exception from
  `check` is not retried: it ends the wait at once (a process that died while
  we waited for it is an answer, not a reason to keep trying).
- `retry(attempt, ...)`: call `attempt` until it returns instead of raising one
  of the exceptions named in `when`; when time is up the last exception is
  raised as it is. Optionally with exponential back-off.

Everything may import this module except `handler/` (which runs inside
TorchServe and imports nothing from the deploy side).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

T = TypeVar("T")

# Which exceptions `retry` tries again after: exception types, or a predicate.
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


@dataclass(frozen=True)
class Retrying:
    """What `retry` tells its `on_retry` callback before it waits for the next attempt."""

    attempt: int  # 1 for the first failure
    error: BaseException
    wait_s: float  # how long until the next attempt


def poll(
    check: Callable[[], T], done: Callable[[T], bool], *, timeout_s: float, every_s: float
) -> tuple[bool, T]:
    """Call `check` every `every_s` s until `done(answer)` or `timeout_s` passed: (done, last answer).

    `check` runs at least once, even with a deadline already past.
    """
    try:
        answer = tenacity.Retrying(
            stop=tenacity.stop_after_delay(max(0.0, timeout_s)),
            wait=tenacity.wait_fixed(every_s),
            retry=tenacity.retry_if_result(lambda answer: not done(answer)),
        )(check)
    except tenacity.RetryError as exc:
        return False, exc.last_attempt.result()
    return True, answer


def retry(
    attempt: Callable[[], T],
    *,
    timeout_s: float,
    every_s: float,
    when: RetryOn = Exception,
    max_every_s: float | None = None,
    on_retry: Callable[[Retrying], None] | None = None,
) -> T:
    """`attempt()`'s answer once it stops raising; after `timeout_s` its last exception.

    `when`: the exceptions worth another attempt (others propagate at once).
    `max_every_s`: back off exponentially from `every_s` up to this (for a host
    that may take minutes to boot); None waits `every_s` each time.
    """
    worth_retrying: tenacity.retry_base
    if isinstance(when, (type, tuple)):
        worth_retrying = tenacity.retry_if_exception_type(when)
    else:
        worth_retrying = tenacity.retry_if_exception(when)
    wait: tenacity.wait.wait_base = (
        tenacity.wait_exponential(multiplier=every_s, max=max_every_s)
        if max_every_s is not None
        else tenacity.wait_fixed(every_s)
    )

    def report(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if on_retry is not None and error is not None and state.next_action is not None:
            on_retry(Retrying(state.attempt_number, error, state.next_action.sleep))

    return tenacity.Retrying(
        stop=tenacity.stop_after_delay(max(0.0, timeout_s)),
        wait=wait,
        retry=worth_retrying,
        before_sleep=report,
        reraise=True,
    )(attempt)
