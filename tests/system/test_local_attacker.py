"""What root, nginx's user and other local users can do to TorchServe on a deployed host.

Against the shared `deployed_host`, in file order (each leaves it serving):

- the management API registers models from the model store only: a copy of our
  own archive elsewhere is refused with TorchServe's allowed-URL error even when
  the service could read it and write its store; a directory elsewhere (which
  TorchServe loads from any path it can see, unchecked) is not visible to it;
- the nftables table guarding TorchServe's ports comes back by itself after
  `systemctl start/reload nftables` and `nft flush ruleset`, while an unprivileged
  user probes every port every second and never gets in;
- when the table cannot be put back, TorchServe is stopped, and started again once
  it can.
"""

from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from bootstrap.steps.base import MANAGEMENT_PORT, MODEL_STORE, TS_TMP_DIR, UNIT_NAME
from serving.contract import make_test_jpeg, post_image
from serving.polling import poll
from tests.support import testhost as th
from tests.support.deployment import Deployment, guest, torchserve_ports_as, wait_serving

pytestmark = pytest.mark.system

# TorchServe's ports, restated: inference, management, metrics, gRPC inference and management.
TORCHSERVE_PORTS = (18080, 18081, 18082, 7070, 7071)
RULES = "/etc/synthdet/nftables.conf"
ALLOWED_URL_ERROR = "does not match any allowed URL(s)"
PROBE_UNIT = "synthdet-test-probe.service"


# ------------------------------------------------------------- model registration


def register(info: th.TestHostInfo, url: str) -> tuple[int, str]:
    """Register `url` through the management API as root on the host: (HTTP status, body)."""
    query = f"url={quote(url, safe='')}&model_name=probe&initial_workers=0"
    out = guest(
        info,
        f"curl -s -X POST -w '\\n%{{http_code}}' 'http://127.0.0.1:{MANAGEMENT_PORT}/models?{query}'",
    )
    body, _, status = out.rpartition("\n")
    return int(status), body


@contextlib.contextmanager
def store_writable_by_the_service(deployed: Deployment) -> Iterator[None]:
    """The service may write its model store (a drop-in and a group-writable store) for a while."""
    info = deployed.info
    dropin = f"/etc/systemd/system/{UNIT_NAME}.d/test-writable-store.conf"
    guest(
        info,
        f"mkdir -p {shlex.quote(dropin.rsplit('/', 1)[0])} && "
        f"printf '[Service]\\nReadWritePaths={MODEL_STORE}\\n' > {dropin} && chmod 770 {MODEL_STORE} && "
        f"systemctl daemon-reload && systemctl restart {UNIT_NAME}",
    )
    try:
        wait_serving(deployed.endpoint)
        yield
    finally:
        guest(
            info,
            f"rm -f {dropin} && rmdir --ignore-fail-on-non-empty {shlex.quote(dropin.rsplit('/', 1)[0])}; "
            f"chmod 750 {MODEL_STORE} && systemctl daemon-reload && systemctl restart {UNIT_NAME}",
        )
        wait_serving(deployed.endpoint)


def test_models_are_registered_from_the_model_store_only(deployed_host: Deployment) -> None:
    info = deployed_host.info
    # A copy of our own archive, readable and writable by the service (its own temporary
    # directory), one in /srv, and its unpacked contents as directories in /srv and /tmp.
    guest(
        info,
        "set -e; "
        f"cp {MODEL_STORE}/synthdet.mar {TS_TMP_DIR}/copy.mar && chown synthdet-svc: {TS_TMP_DIR}/copy.mar; "
        f"install -m 644 {MODEL_STORE}/synthdet.mar /srv/copy.mar; "
        "for d in /srv/synthdet-dir /tmp/synthdet-dir; do rm -rf $d; mkdir -p $d; "
        f"(cd $d && python3 -m zipfile -e {MODEL_STORE}/synthdet.mar .); chmod -R a+rwX $d; done",
    )
    try:
        with store_writable_by_the_service(deployed_host):
            for url in (
                f"file://{TS_TMP_DIR}/copy.mar",
                "file:///srv/copy.mar",
                f"FILE://{TS_TMP_DIR}/copy.mar",
                "http://127.0.0.1:18080/ping",
            ):
                status, body = register(info, url)
                print(f"register {url}: {status} {body.strip()[:160]}")
                assert status == 404 and ALLOWED_URL_ERROR in body, (url, status, body)
            # A bare directory path is not checked against allowed_urls: TorchServe loads it
            # from wherever it can see one. The service sees neither /srv nor the host's /tmp.
            for directory in ("/srv/synthdet-dir", "/tmp/synthdet-dir"):
                status, body = register(info, directory)
                print(f"register {directory}: {status} {body.strip()[:160]}")
                assert status == 404 and "Model not found" in body, (directory, status, body)
            assert guest(info, f"ls {MODEL_STORE}").split() == ["synthdet.mar"]
            models = json.loads(guest(info, f"curl -sf http://127.0.0.1:{MANAGEMENT_PORT}/models"))
            assert [m["modelName"] for m in models["models"]] == ["synthdet"]
    finally:
        guest(info, f"rm -rf {TS_TMP_DIR}/copy.mar /srv/copy.mar /srv/synthdet-dir /tmp/synthdet-dir")


def test_nginx_reaches_the_inference_port_only(deployed_host: Deployment) -> None:
    """Registering a model is running code: the management API is root's alone."""
    info = deployed_host.info
    user = guest(info, "ps -o user= -C nginx | grep -v root | sort -u").split()
    assert len(user) == 1, user
    expected = {port: "refused" for port in TORCHSERVE_PORTS} | {18080: "open"}
    assert torchserve_ports_as(info, user[0]) == expected
    assert post_image(deployed_host.endpoint, make_test_jpeg(320, 240), timeout_s=60).status_code == 200


# ------------------------------------------------------------------ the port guard

# Runs in the guest as `nobody`: every second, a connection to each port; one JSON line each time.
PROBE = """
import json, socket, sys, time
ports = [int(p) for p in sys.argv[1:]]
while True:
    started = time.time()
    states = {}
    for port in ports:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            states[port] = "open"
        except OSError:
            states[port] = "refused"
    print(json.dumps({"t": started, "ports": states}), flush=True)
    time.sleep(max(0.0, 1.0 - (time.time() - started)))
"""


class Prober:
    """A local unprivileged user connecting to every TorchServe port every second."""

    def __init__(self, info: th.TestHostInfo) -> None:
        self.info = info

    def start(self) -> None:
        ports = " ".join(str(port) for port in TORCHSERVE_PORTS)
        guest(
            self.info,
            f"systemd-run --quiet --unit={PROBE_UNIT} --uid=nobody --gid=nogroup --collect "
            f"python3 -c {shlex.quote(PROBE)} {ports}",
        )

    def stop(self) -> None:
        th.ssh_exec(self.info, f"systemctl stop {PROBE_UNIT}")

    def probes(self) -> list[dict[str, object]]:
        out = guest(self.info, f"journalctl -u {PROBE_UNIT} -o cat --no-pager")
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def wait_for_probes_after(self, t: float, count: int = 1) -> None:
        done, _ = poll(
            lambda: sum(float(p["t"]) > t for p in self.probes()),  # type: ignore[arg-type]
            lambda seen: seen >= count,
            timeout_s=30,
            every_s=0.5,
        )
        assert done, "the prober stopped probing"


@contextlib.contextmanager
def probing(info: th.TestHostInfo) -> Iterator[Prober]:
    prober = Prober(info)
    prober.start()
    try:
        yield prober
    finally:
        prober.stop()


def guest_time(info: th.TestHostInfo) -> float:
    return float(guest(info, "date +%s.%N"))


def guarded(info: th.TestHostInfo) -> bool:
    """The table is loaded and TorchServe refuses `nobody` on every port while it serves root."""
    if th.ssh_exec(info, "nft list table inet synthdet")[0] != 0:
        return False
    return torchserve_ports_as(info, "nobody") == dict.fromkeys(TORCHSERVE_PORTS, "refused")


def wait_guarded(info: th.TestHostInfo, since: float, timeout_s: float = 60) -> float:
    done, _ = poll(lambda: guarded(info), bool, timeout_s=timeout_s, every_s=1.0)
    took = guest_time(info) - since
    assert done, f"TorchServe's ports were not guarded again {timeout_s:.0f} s after the event"
    return took


def no_probe_got_in(probes: list[dict[str, object]]) -> None:
    got_in = [p for p in probes if "open" in p["ports"].values()]  # type: ignore[union-attr]
    assert not got_in, f"an unprivileged user reached TorchServe: {got_in[:5]}"


def test_the_port_guard_comes_back_by_itself(deployed_host: Deployment) -> None:
    info = deployed_host.info
    started = guest_time(info)
    nftables_was_active = th.ssh_exec(info, "systemctl is-active --quiet nftables")[0] == 0
    events = {
        # Debian's nftables.service: its start and its reload both begin with `flush ruleset`.
        "systemctl start nftables": "systemctl start nftables",
        "systemctl reload nftables": "systemctl reload nftables",
        "nft flush ruleset": "nft flush ruleset",
    }
    if nftables_was_active:
        events.pop("systemctl start nftables")
    recovered = {}
    # The watcher's held copy: owned by its process, passed by every flush below.
    held = guest(info, "nft list table inet synthdet_held")
    assert "flags owner" in held, held
    with probing(info) as prober:
        prober.wait_for_probes_after(started)
        for name, command in events.items():
            at = guest_time(info)
            guest(info, f"{command} && nft list table inet synthdet_held > /dev/null")  # still there
            recovered[name] = wait_guarded(info, at)
            prober.wait_for_probes_after(guest_time(info), count=2)
        probes = prober.probes()
    if not nftables_was_active:
        guest(info, "systemctl stop nftables")  # as it was (its stop flushes too)
        wait_guarded(info, guest_time(info))
    print(
        f"{len(probes)} probes; guarded again after: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in recovered.items())
    )
    assert len(probes) >= 3
    no_probe_got_in(probes)
    # What put it back said so in the journal.
    journal = guest(info, f"journalctl -t synthdet-firewall --since @{started:.0f} -o cat --no-pager")
    print(journal)
    assert "put it back" in journal
    # Root and the app's path through nginx still reach TorchServe.
    assert torchserve_ports_as(info, "root") == dict.fromkeys(TORCHSERVE_PORTS, "open")
    assert post_image(deployed_host.endpoint, make_test_jpeg(320, 240), timeout_s=60).status_code == 200


def test_torchserve_stops_while_the_guard_cannot_come_back(deployed_host: Deployment) -> None:
    info = deployed_host.info
    started = guest_time(info)
    with probing(info) as prober:
        prober.wait_for_probes_after(started)
        guest(info, f"mv {RULES} {RULES}.away && nft flush ruleset")
        try:
            stopped, _ = poll(
                lambda: th.ssh_exec(info, f"systemctl is-active --quiet {UNIT_NAME}")[0] != 0,
                bool,
                timeout_s=60,
                every_s=1.0,
            )
            assert stopped, "TorchServe kept running without its port guard"
            print(f"TorchServe stopped {guest_time(info) - started:.1f} s after the guard went")
        finally:
            guest(info, f"mv {RULES}.away {RULES}")
        back = guest_time(info)
        # The next check (every 30 s) loads the rules and starts TorchServe again.
        wait_guarded(info, back, timeout_s=90)
        restarted, _ = poll(
            lambda: th.ssh_exec(info, f"systemctl is-active --quiet {UNIT_NAME}")[0] == 0,
            bool,
            timeout_s=60,
            every_s=1.0,
        )
        assert restarted, "TorchServe was not started again once the guard was back"
        print(
            f"guarded and TorchServe started again {guest_time(info) - back:.1f} s after the rules were back"
        )
        probes = prober.probes()
    no_probe_got_in(probes)
    journal = guest(info, f"journalctl -t synthdet-firewall --since @{started:.0f} -o cat --no-pager")
    print(journal)
    assert "cannot be put back" in journal and "starting" in journal
    wait_serving(deployed_host.endpoint)
