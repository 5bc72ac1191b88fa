"""What a deployed host shows the internet: SSH and the HTTPS endpoint, nothing else.

Runs against the shared `deployed_host` (nothing here changes it). The port
scan only ever targets the test host's own address inside its network
namespace.
"""

from __future__ import annotations

import concurrent.futures
import errno
import re
import socket
import ssl
import time
from collections.abc import Callable

import httpx
import pytest

from bootstrap.steps.base import (
    CERT_FILE,
    CONFIG_FILE,
    ETC_DIR,
    KEY_FILE,
    SECRET_FILE,
    SERVICE_USER,
    STATE_FILE,
    TLS_DIR,
    TORCHSERVE_PORTS,
    UNIT_NAME,
)
from bootstrap.steps.firewall import FIREWALL_UNIT_NAME
from serving.contract import make_test_jpeg, post_image
from serving.polling import poll
from tests.support import testhost as th
from tests.support.deployment import Deployment, guest, torchserve_ports_as

pytestmark = pytest.mark.system

ALL_PORTS = range(1, 65536)


def _tcp_open(address: str, port: int, timeout_s: float = 2.0) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        result = sock.connect_ex((address, port))
    if result in (0,):
        return True
    # Refused is a clean "closed"; a timeout would mean a filter we did not expect.
    assert result in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.EAGAIN), (port, result)
    return False


def scan(address: str, ports: range = ALL_PORTS, threads: int = 256) -> set[int]:
    """Full TCP connect scan (65535 ports in ~10-20 s: the guest answers RST at once)."""
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        found = pool.map(lambda port: port if _tcp_open(address, port) else 0, ports, chunksize=256)
        return {port for port in found if port}


def test_a_full_port_scan_finds_only_ssh_and_https(deployed_host: Deployment) -> None:
    started = time.monotonic()
    open_ports = scan(deployed_host.info.host)
    print(f"port scan of 65535 TCP ports: {sorted(open_ports)} in {time.monotonic() - started:.1f} s")
    assert open_ports == {22, 443}


def test_without_the_secret_everything_is_a_json_404_and_rate_limited(deployed_host: Deployment) -> None:
    base = deployed_host.base
    paths = ["/", "/predictions/synthdet", "/ping", "/models", "/metrics", "/api-description", "/.env"]
    with httpx.Client(verify=False, timeout=10) as client:
        # An earlier test may have spent the miss bucket (10/s): wait until a miss is a 404 again
        # (a refused request costs the bucket nothing; the count below only bounds refusals).
        first = let_through(lambda: client.post(f"{base}/predictions/synthdet", content=b"x"))
        assert first.status_code == 404 and first.json() == {"code": 404, "error": "not found"}
        assert first.headers["server"] == "nginx"  # no version
        statuses = []
        started = time.monotonic()
        for index in range(120):
            response = client.get(base + paths[index % len(paths)])
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert response.headers["retry-after"] == "1"
                assert response.json()["code"] == 429
        elapsed = time.monotonic() - started
        # The right secret is not slowed down by someone else's guessing.
        assert client.get(f"{base}/{deployed_host.secret}/ping").status_code == 200
    counts = {code: statuses.count(code) for code in set(statuses)}
    print(f"120 guesses in {elapsed:.1f} s: {counts}")
    assert set(statuses) <= {404, 429}
    # burst 40 at 10/s: roughly the first 40 + 10/s pass, the rest are refused.
    assert counts.get(429, 0) >= 120 - 40 - 10 * elapsed - 5, counts


def let_through(send: Callable[[], httpx.Response]) -> httpx.Response:
    """`send()`'s answer once nginx's rate limits let it through: an earlier test may have
    spent this address's buckets, and they refill at their rate (a 429 costs nothing)."""
    _, response = poll(send, lambda answer: answer.status_code != 429, timeout_s=30, every_s=0.2)
    return response


def test_get_through_nginx_is_the_static_page_and_hostile_requests_get_json(
    deployed_host: Deployment,
) -> None:
    """A browser's GET: the viewer page, whatever it sends along; nothing reflected or forwarded."""
    url = deployed_host.endpoint
    with httpx.Client(verify=False, timeout=10) as client:
        page = let_through(lambda: client.get(url))
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for name, send in {
            "script in the query": lambda: client.get(url, params={"q": "<script>alert(1)</script>"}),
            "an image body with a GET": lambda: client.request("GET", url, content=make_test_jpeg(320, 240)),
            "asking for JSON": lambda: client.get(url, headers={"Accept": "application/json"}),
        }.items():
            response = let_through(send)
            assert response.status_code == 200 and response.content == page.content, name
        head = let_through(lambda: client.head(url))
        assert head.status_code == 200 and head.content == b""
        # Headers over nginx's buffers: a JSON 400 (a URL over 8k keeps nginx's own 414).
        big = client.get(url, headers={"X-Big": "b" * 20000})
        assert big.status_code == 400 and big.json() == {"code": 400, "error": "request headers too large"}
        assert client.get(url + "?" + "a" * 20000).status_code == 414
        # The viewer's internal name is no way in.
        hidden = let_through(lambda: client.get(f"{deployed_host.base}/synthdet-viewer"))
        assert hidden.status_code == 404 and hidden.json()["code"] == 404
    assert post_image(url, make_test_jpeg(320, 240), timeout_s=60, verify=False).status_code == 200


def _handshake(address: str, version: ssl.TLSVersion, ciphers: str | None = None) -> str | None:
    """The negotiated protocol, or None when the server refuses the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # Let this client offer old protocols and ciphers, so the refusal is the server's.
    context.set_ciphers(ciphers or "ALL:@SECLEVEL=0")
    context.minimum_version = version
    context.maximum_version = version
    try:
        with socket.create_connection((address, 443), timeout=5) as raw, context.wrap_socket(raw) as tls:
            return tls.version()
    except (ssl.SSLError, ConnectionResetError):
        return None


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_1_2_or_newer_only_with_forward_secrecy(deployed_host: Deployment) -> None:
    address = deployed_host.info.host
    assert _handshake(address, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    assert _handshake(address, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert _handshake(address, ssl.TLSVersion.TLSv1_1) is None
    assert _handshake(address, ssl.TLSVersion.TLSv1) is None
    # TLS 1.2 without forward secrecy (static RSA key exchange) or with CBC: refused.
    assert _handshake(address, ssl.TLSVersion.TLSv1_2, "AES128-GCM-SHA256:AES256-SHA:@SECLEVEL=0") is None
    assert _handshake(address, ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA:@SECLEVEL=0") is None
    # What nginx really runs with, not just the file we wrote.
    running = guest(deployed_host.info, "nginx -T 2>/dev/null")
    assert re.search(r"^\s*ssl_protocols\s+TLSv1\.2 TLSv1\.3;", running, re.M)


def test_secrets_on_disk_are_root_only_and_never_in_logs(deployed_host: Deployment) -> None:
    info, secret = deployed_host.info, deployed_host.secret
    # Put the secret through every path that logs: served, refused, wrong method,
    # too large, rate limited (the 429s above), an upstream error is in test_faults.
    post_image(deployed_host.endpoint, make_test_jpeg(320, 240), timeout_s=60)
    with httpx.Client(verify=False, timeout=30) as client:
        client.post(deployed_host.endpoint, content=b"not an image")
        client.get(deployed_host.endpoint)  # the viewer page
        client.delete(deployed_host.endpoint)
        oversize = client.post(deployed_host.endpoint, content=b"\0" * (11 * 1024 * 1024))
        assert oversize.status_code == 413 and oversize.json()["code"] == 413  # JSON, from nginx
    for path in (SECRET_FILE, KEY_FILE, STATE_FILE, "/etc/nginx/sites-available/synthdet"):
        assert guest(info, f"stat -c '%U:%G %a' {path}").strip() == "root:root 600", path
    modes = guest(info, f"stat -c '%a' {CERT_FILE} {CONFIG_FILE} {ETC_DIR} {TLS_DIR}").split()
    assert modes == ["644", "640", "750", "700"]
    # Every file anywhere that holds the secret is root's and 0600.
    holders = guest(
        info,
        f"grep -rlsF -- {secret} /etc /var /opt /root /home /tmp /srv /run "
        "--exclude-dir=model-store --exclude-dir=venv-* || true",
        timeout=300,
    ).split()
    assert holders, "the secret is not on disk at all?"
    for path in holders:
        assert guest(info, f"stat -c '%U %a' {path}").strip() == "root 600", path
        assert not path.startswith(("/var/log", "/run/log")), f"the secret is in a log: {path}"
    journal = guest(info, f"journalctl --no-pager -o cat | grep -cF -- {secret} || true").strip()
    assert journal == "0", "the secret is in the journal"


def test_the_service_follows_systemds_hardening_advice(deployed_host: Deployment) -> None:
    info = deployed_host.info
    report = guest(info, f"systemd-analyze security --no-pager {UNIT_NAME}")
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report)[1])  # type: ignore[index]
    print(f"systemd-analyze security {UNIT_NAME}: {score}")
    # Debian 12's systemd rates 0 (best) to 10; below 4 is "OK". The JVM needs
    # W^X off, and a GPU needs its device nodes, which keeps it from "SAFE".
    assert score < 4.0, report
    shown = guest(info, f"systemctl show {UNIT_NAME} -p User -p NoNewPrivileges -p ProtectSystem -p Restart")
    assert f"User={SERVICE_USER}" in shown and "NoNewPrivileges=yes" in shown
    assert "ProtectSystem=strict" in shown and "Restart=always" in shown
    # nginx: restarted by systemd if it dies, no version in headers, slow clients cut off.
    assert guest(info, "systemctl show nginx -p Restart").strip() == "Restart=always"
    running = guest(info, "nginx -T 2>/dev/null")
    for directive in ("server_tokens off;", "client_header_timeout 10s;", "ssl_session_tickets off;"):
        assert directive in running, directive


# ------------------------------------------------------------------ a local attacker


def test_only_root_and_nginx_reach_torchserve_while_the_app_path_works(deployed_host: Deployment) -> None:
    info = deployed_host.info
    # Every TorchServe port (inference, management, metrics, gRPC) refuses other local
    # users: no registering a model (code) from a directory, no going round nginx.
    for user in ("nobody", info.user):
        assert torchserve_ports_as(info, user) == dict.fromkeys(TORCHSERVE_PORTS, "refused"), user
    assert torchserve_ports_as(info, "root") == dict.fromkeys(TORCHSERVE_PORTS, "open")
    assert post_image(deployed_host.endpoint, make_test_jpeg(320, 240), timeout_s=60).status_code == 200
    # The rules are a unit of their own, enabled, and TorchServe requires it.
    assert guest(info, f"systemctl is-enabled {FIREWALL_UNIT_NAME}").strip() == "enabled"
    assert FIREWALL_UNIT_NAME in guest(info, f"systemctl show -p Requires --value {UNIT_NAME}")


def test_the_model_runs_as_an_account_of_its_own_that_cannot_plant_code(deployed_host: Deployment) -> None:
    info = deployed_host.info
    java = guest(info, f"systemctl show -p MainPID --value {UNIT_NAME}").strip()
    workers = guest(info, f"pgrep -f model_service_worker -u {SERVICE_USER}").split()
    assert java != "0" and workers
    login_uid = guest(info, f"id -u {info.user}").strip()
    service_uid = guest(info, f"id -u {SERVICE_USER}").strip()
    assert service_uid not in ("0", login_uid) and int(service_uid) < 1000
    for pid in (java, *workers):
        status = guest(info, f"cat /proc/{pid}/status")
        uids = re.search(r"^Uid:\s+(\d+)", status, re.M)
        groups = re.search(r"^Groups:\s*(.*)$", status, re.M)
        assert uids and uids[1] == service_uid, pid
        assert groups and groups[1].split() in ([], [guest(info, f"id -g {SERVICE_USER}").strip()]), groups[1]
    assert guest(info, f"id -Gn {SERVICE_USER}").split() == [SERVICE_USER]  # no adm, sudo, video ...
    account = guest(info, f"getent passwd {SERVICE_USER}").strip().split(":")
    assert account[6] == "/usr/sbin/nologin" and account[5] == "/var/lib/synthdet"
    # Its home and working directory are not its to write; no user site, no "." class path.
    for path in ("/var/lib/synthdet", "/opt/synthdet", "/etc/synthdet"):
        rc, _, _ = th.ssh_exec(info, f"runuser -u {SERVICE_USER} -- test -w {path}")
        assert rc != 0, f"{SERVICE_USER} can write {path}"
    environ = guest(info, f"tr '\\0' '\\n' < /proc/{workers[0]}/environ")
    assert "PYTHONNOUSERSITE=1" in environ.splitlines()
    cmdline = guest(info, f"tr '\\0' '\\n' < /proc/{java}/cmdline").splitlines()
    class_path = cmdline[cmdline.index("-cp") + 1].split(":")
    assert "." not in class_path and "" not in class_path, class_path
    assert guest(info, f"readlink /proc/{java}/cwd").strip() == "/var/lib/synthdet"
