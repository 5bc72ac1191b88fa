"""The answers refused clients get: one table, rendered for nginx and answered by `synthdet serve`.

The expected bytes are restated here, not read from serving/error_answers.py: a
changed answer must fail a test. tests/system/test_error_answers.py compares
the two doors on a deployed host.
"""

from __future__ import annotations

import httpx
import pytest

from bootstrap.api import DeployOptions
from bootstrap.steps import nginx
from serving.error_answers import ERROR_ANSWERS, nginx_error_locations, nginx_retry_after_map
from serving.settings import ServingSettings
from tests.support.fake_host import SECRET, make_run
from tests.support.refusals import Answer, answer_of, ask_refused, front_without_torchserve

LIMIT = 2 * 1024 * 1024
JSON = "application/json"
# status -> (body, Retry-After)
EXPECTED = {
    429: (b'{"code": 429, "error": "too many requests from this address; retry in 1 s"}\n', "1"),
    503: (b'{"code": 503, "error": "the server is busy or restarting; retry in 1 s"}\n', "1"),
    404: (b'{"code": 404, "error": "not found"}\n', None),
    405: (b'{"code": 405, "error": "method not allowed"}\n', None),
    400: (b'{"code": 400, "error": "request headers too large"}\n', None),
    413: (b'{"code": 413, "error": "request body too large (the limit is 2097152 bytes)"}\n', None),
}


def expected(status: int) -> Answer:
    body, retry_after = EXPECTED[status]
    return Answer(status, body, JSON, retry_after)


def test_the_table_holds_each_answer_once() -> None:
    table = {a.status: (a.body(LIMIT), a.headers().get("Retry-After")) for a in ERROR_ANSWERS}
    assert table == EXPECTED
    assert len(ERROR_ANSWERS) == len(EXPECTED)


@pytest.mark.parametrize("status", sorted(EXPECTED))
def test_nginx_gets_a_named_location_per_row(status: int) -> None:
    body, _ = EXPECTED[status]
    # nginx's single-quoted string: the newline written as \n, which nginx turns back into one.
    quoted = "'" + body.decode().replace("\n", "\\n") + "'"
    block = (
        f"    location @synthdet_{status} {{\n"
        f"        default_type {JSON};\n"
        f"        return {status} {quoted};\n"
        "    }\n"
    )
    assert block in nginx_error_locations(LIMIT)


def test_nginx_says_retry_after_on_429_and_503_only() -> None:
    assert nginx_retry_after_map() == "    429     1;\n    503     1;\n"


def test_the_deployed_site_holds_every_row() -> None:
    """What a host's nginx is given: each answer's named location, and Retry-After where due."""
    options = DeployOptions(serving=ServingSettings(max_request_bytes=LIMIT))
    site = nginx.render_site(make_run(options=options), SECRET)
    for status, (body, _) in EXPECTED.items():
        quoted = "'" + body.decode().replace("\n", "\\n") + "'"
        location = site.split(f"    location @synthdet_{status} {{\n")[1].split("\n    }\n")[0]
        assert location.splitlines() == [
            f"        default_type {JSON};",
            f"        return {status} {quoted};",
        ]
    retry_map = site.split("map $status $synthdet_retry_after {\n")[1].split("}")[0]
    assert retry_map.split() == ["429", "1;", "503", "1;", "default", '"";']


def test_synthdet_serve_answers_from_the_table() -> None:
    with front_without_torchserve(LIMIT) as url, httpx.Client(timeout=10) as client:
        answers = ask_refused(client, url, LIMIT)
        # No TorchServe behind it (starting, restarting, or a full queue): busy, retry.
        busy = answer_of(client.post(url, content=b"\xff\xd8 an image"))
    assert answers == {
        "a path that is not there": expected(404),
        "a model that is not there": expected(404),
        "DELETE on the prediction URL": expected(405),
        "POST to the health path": expected(405),
        "a body over the limit": expected(413),
    }
    assert busy == expected(503)
