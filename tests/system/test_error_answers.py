"""The same bad request gets the same bytes from a deployed host's nginx and from `synthdet serve`.

Both doors answer refusals from one table (serving/error_answers.py): status,
JSON body, Content-Type and Retry-After must be identical. The local door is
`synthdet serve`'s front, started here with the deployed host's body limit and
no TorchServe behind it (it refuses these without one; with none it is busy).
"""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from serving.contract import make_test_jpeg
from serving.polling import poll
from tests.support.deployment import Deployment
from tests.support.refusals import Answer, answer_of, ask_refused, front_without_torchserve

pytestmark = pytest.mark.system


def _wait_until_misses_are_404(client: httpx.Client, base: str) -> None:
    """Wrong paths are rate-limited (429 beyond a burst): wait until the bucket an earlier
    test may have spent lets one through, so the wrong path gets its own answer."""
    done, status = poll(
        lambda: client.get(f"{base}/nothing-here").status_code,
        lambda status: status == 404,
        timeout_s=30,
        every_s=0.5,
    )
    assert done, f"a wrong path still gets {status}"


def _busy_answer(url: str) -> Answer:
    """Four app frames at once: nginx lets the CPU worker's one through and refuses the rest."""
    frame = make_test_jpeg(1280, 960, seed=41)
    with (
        httpx.Client(verify=False, timeout=120) as client,
        concurrent.futures.ThreadPoolExecutor(4) as pool,
    ):
        answers = list(pool.map(lambda _: answer_of(client.post(url, content=frame)), range(4)))
    refused = [answer for answer in answers if answer.status == 503]
    assert refused, f"four frames at once and none refused: {[a.status for a in answers]}"
    assert all(answer == refused[0] for answer in refused), refused
    return refused[0]


def test_both_doors_refuse_the_same_request_with_the_same_bytes(deployed_host: Deployment) -> None:
    limit = deployed_host.options.serving.max_request_bytes
    with httpx.Client(verify=False, timeout=60) as client:
        _wait_until_misses_are_404(client, deployed_host.base)
        deployed = ask_refused(client, deployed_host.endpoint, limit)
    deployed_busy = _busy_answer(deployed_host.endpoint)
    with front_without_torchserve(limit) as url, httpx.Client(timeout=60) as client:
        local = ask_refused(client, url, limit)
        local_busy = answer_of(client.post(url, content=make_test_jpeg(320, 240)))
    print(f"\nrefusals compared: {sorted(deployed)} and busy (503)")
    assert local == deployed
    assert local_busy == deployed_busy
    # Not all alike: each refusal says what went wrong.
    assert {answer.status for answer in deployed.values()} == {404, 405, 413}
    assert local_busy.status == 503 and local_busy.retry_after == "1"
