"""Throwaway systemd "VMs" for the system tests: systemd-nspawn guests in network namespaces.

One module a concern:
    common.py      paths, settings, errors, small process and mount helpers
    image.py       the shared Debian root filesystem (debootstrap + image packages)
    torch_site.py  torch and torchvision for the guests, hard-linked from .venv
    wheelhouse.py  the service's locked packages, downloaded once, served over HTTP
    network.py     a network namespace and veth pair per host
    guest.py       a host's disk, logins, boot, SSH, reboot and teardown
    cli.py         `tests/testhost` (up, down, reboot, status, exec, build)

Tests use it through fixtures (tests/system/conftest.py); by hand: docs/testhost.md.
"""

from tests.support.testhost.common import (
    CACHE_ROOT,
    GUEST_PYTHON,
    VENV,
    TestHostError,
    TestHostInfo,
    is_supported,
)
from tests.support.testhost.common import _short_hash as short_hash
from tests.support.testhost.guest import (
    DEFAULT_LOGIN,
    LOGINS,
    add_login,
    down,
    guest_exec,
    hosts,
    info,
    is_running,
    power_on,
    reboot,
    ssh_argv,
    ssh_exec,
    status,
    up,
)
from tests.support.testhost.torch_site import torch_closure

__all__ = [
    "CACHE_ROOT",
    "DEFAULT_LOGIN",
    "GUEST_PYTHON",
    "LOGINS",
    "VENV",
    "TestHostError",
    "TestHostInfo",
    "add_login",
    "down",
    "guest_exec",
    "hosts",
    "info",
    "is_running",
    "is_supported",
    "power_on",
    "reboot",
    "short_hash",
    "ssh_argv",
    "ssh_exec",
    "status",
    "torch_closure",
    "up",
]
