"""After hostile bodies, broken TLS and an upstream failure, no log on the host holds the URL secret.

nginx writes the request line (the secret included) into every error message
about a request, at every level; TLS records it cannot read after the
handshake are `crit` errors (tests/support/hostile_tls.py). This test puts the
secret through everything that makes nginx, TorchServe or systemd write a line:
the hostile-body catalogue of tests/integration/test_hostile_http.py through
nginx, clients that break TLS or HTTP halfway, requests nginx refuses itself,
and TorchServe stopped under a request; then it searches every file on the
host and every field of every journal entry. It runs against the shared
`deployed_host` and leaves it serving.
"""

from __future__ import annotations

import time

import httpx
import pytest

from bootstrap.steps.base import NGINX_SITE, SECRET_FILE, UNIT_NAME
from serving.polling import poll
from tests.integration.test_hostile_http import CASES, send
from tests.support import hostile_tls
from tests.support.deployment import Deployment, guest, wait_serving

pytestmark = pytest.mark.system

# Searched for files holding the secret: the whole host but the kernel's views, the
# system's own software and the (large, secret-free) model archives and venvs.
SEARCH = (
    "grep -rlsaF -f {secret_file} / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev "
    "--exclude-dir=usr --exclude-dir=model-store --exclude-dir='venv-*' || true"
)


def hostile_bodies(deployed: Deployment) -> dict[int, int]:
    """The integration suite's catalogue of hostile bodies, through nginx, each until it got
    past nginx's limits (429/503: a CPU host takes one frame at a time): {status: count}."""
    statuses: dict[int, int] = {}
    with httpx.Client(verify=False, timeout=120) as client:
        for case in CASES.values():
            _, response = poll(
                lambda case=case: send(client, deployed.endpoint, case),  # type: ignore[misc]
                lambda answer: answer.status_code not in (429, 503),
                timeout_s=60,
                every_s=0.5,
            )
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    return statuses


def upstream_down(deployed: Deployment) -> list[int]:
    """Requests while TorchServe is stopped (nginx: "connect() failed ... while connecting to upstream")."""
    info = deployed.info
    guest(info, f"systemctl stop {UNIT_NAME}")
    try:
        with httpx.Client(verify=False, timeout=30) as client:
            return [client.post(deployed.endpoint, content=b"\xff\xd8").status_code for _ in range(3)]
    finally:
        guest(info, f"systemctl start {UNIT_NAME}")


def test_no_log_holds_the_secret_after_hostile_traffic(deployed_host: Deployment) -> None:
    info, path = deployed_host.info, f"/{deployed_host.secret}/predictions/synthdet"
    started = time.monotonic()
    print(f"hostile bodies through nginx: {hostile_bodies(deployed_host)}")
    broken = hostile_tls.abuse_all(info.host, 443, path)
    assert len(broken) == 2 * len(hostile_tls.ABUSES)
    print("broken TLS/HTTP clients: " + ", ".join(f"{k}: {v}" for k, v in broken.items() if v != "done"))
    refused = hostile_tls.send_malformed(info.host, 443, path)
    print(f"malformed requests: {refused}")
    # nginx answers these itself (so it did see and parse the request line).
    assert refused["a URI over 8 KiB"].startswith("HTTP/1.1 414"), refused
    assert refused["a body over the limit announced"].startswith("HTTP/1.1 413"), refused
    assert refused["invalid chunked body"].startswith("HTTP/1.1 400"), refused
    print(f"with TorchServe stopped: {upstream_down(deployed_host)}")
    wait_serving(deployed_host.endpoint)
    print(f"hostile traffic took {time.monotonic() - started:.0f} s")

    # The secret is read from its own file on the host: it never appears on a command line.
    holders = set(guest(info, SEARCH.format(secret_file=SECRET_FILE), timeout=600).split())
    assert holders == {SECRET_FILE, NGINX_SITE}, f"the secret is in {sorted(holders)}"
    # Every field of every journal entry (messages, command lines, unit names), binary ones too.
    journal = guest(
        info, f"journalctl --no-pager -o export | grep -caF -f {SECRET_FILE} || true", timeout=300
    ).strip()
    assert journal == "0", f"{journal} journal fields hold the secret"
