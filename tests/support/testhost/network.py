"""Each test host's network: a namespace and a veth pair on 10.203.N.0/24, nothing beyond."""

from __future__ import annotations

import re
from pathlib import Path

from serving.polling import poll
from tests.support.testhost.common import (
    STATE_ROOT,
    SUBNET_PREFIX,
    SUBNET_RANGE,
    TestHostError,
    _load_json,
    _netns,
    _run,
    _veths,
)


def _used_subnets() -> set[int]:
    used = set()
    for state_file in STATE_ROOT.glob("*/state.json"):
        state = _load_json(state_file) or {}
        if isinstance(state.get("n"), int):
            used.add(state["n"])
    addrs = _run(["ip", "-o", "-4", "addr", "show"], timeout=10).stdout
    used.update(int(n) for n in re.findall(rf"inet {re.escape(SUBNET_PREFIX)}\.(\d+)\.", addrs))
    return used


def _allocate_subnet() -> int:
    used = _used_subnets()
    for n in SUBNET_RANGE:
        if n not in used:
            return n
    raise TestHostError(f"all {len(SUBNET_RANGE)} subnets are taken; `tests/testhost down --all` frees them")


def _setup_network(name: str, n: int) -> None:
    ns = _netns(name)
    host_if, guest_if = _veths(name)
    net = f"{SUBNET_PREFIX}.{n}"
    for argv in (
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", guest_if],
        ["ip", "link", "set", guest_if, "netns", ns],
        ["ip", "addr", "add", f"{net}.1/24", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "-n", ns, "addr", "add", f"{net}.2/24", "dev", guest_if],
        ["ip", "-n", ns, "link", "set", guest_if, "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        # No default route on purpose: DNS then fails at once instead of after 10 s.
    ):
        _run(argv, timeout=15)


def _teardown_network(name: str) -> None:
    ns = _netns(name)
    if ns in _run(["ip", "netns", "list"], timeout=10).stdout.split():
        _run(["ip", "netns", "del", ns], timeout=15)  # takes the veth pair with it
    # The host end normally vanishes with the namespace (asynchronously); this catches a veth
    # left by an `up` that crashed before moving the peer into the namespace.
    host_if, _ = _veths(name)

    def delete_it() -> bool:
        if not Path(f"/sys/class/net/{host_if}").exists():
            return False
        _run(["ip", "link", "del", host_if], timeout=15, check=False)
        return Path(f"/sys/class/net/{host_if}").exists()

    deleted, _ = poll(delete_it, lambda still_there: not still_there, timeout_s=5, every_s=0.1)
    if not deleted:
        raise TestHostError(f"could not delete the interface {host_if}")
