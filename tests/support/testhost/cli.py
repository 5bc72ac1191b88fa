"""`tests/testhost`: the test hosts by hand (see docs/testhost.md). Needs root."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from tests.support.testhost.common import BOOT_TIMEOUT, TestHostError, _log, _require_supported
from tests.support.testhost.guest import (
    DEFAULT_LOGIN,
    LOGINS,
    _supervise,
    down,
    hosts,
    info,
    reboot,
    ssh_argv,
    status,
    up,
)
from tests.support.testhost.image import build_rootfs
from tests.support.testhost.torch_site import build_torch_site
from tests.support.testhost.wheelhouse import build_wheelhouse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tests/testhost",
        description="Throwaway systemd test hosts (systemd-nspawn) for the SSH bootstrap. "
        "Needs root. Progress goes to stderr; `up` prints one JSON line to stdout.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="boot a host (or print the running one's JSON)")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=BOOT_TIMEOUT)
    p.add_argument(
        "--login",
        choices=sorted(LOGINS),
        default=DEFAULT_LOGIN,
        help=f"the login a cloud gives you (default {DEFAULT_LOGIN}: GCP's non-root sudo user "
        "`synthdet`; ubuntu: AWS's; root: root)",
    )
    p = sub.add_parser("down", help="power off and remove a host (safe if it is not up)")
    p.add_argument("names", nargs="*")
    p.add_argument("--all", action="store_true", help="every host on this machine")
    p = sub.add_parser("reboot", help="reboot a host and wait for SSH")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=BOOT_TIMEOUT)
    p = sub.add_parser("status", help="list hosts")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser(
        "exec",
        help="run a command in a host as root over SSH, like `ssh HOST 'cmd; cmd'` (a shell without one)",
    )
    p.add_argument("name")
    p.add_argument("--user", default="root", help="log in as this user instead of root")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="[--] COMMAND...: run by the guest's shell")
    sub.add_parser("build", help="build or update the cached rootfs, torch site and wheelhouse")
    return parser


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C, so a half-booted host is cleaned up


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_supervise"] and len(argv) == 2:  # internal: the detached supervisor
        return _supervise(argv[1])
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with `&`
    try:
        return _dispatch(args)
    except TestHostError as exc:
        print(f"testhost: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def remote_command(words: Sequence[str]) -> str:
    """What `exec` runs: like ssh, the words joined by spaces for the remote shell, so
    `exec NAME -- 'cmd; cmd'` and `exec NAME -- systemctl status nginx` both work."""
    words = list(words[1:] if words[:1] == ["--"] else words)
    return " ".join(words)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "up":
        print(up(args.name, timeout=args.timeout, login=args.login).to_json(), flush=True)
    elif args.command == "down":
        names = hosts() if args.all else args.names
        if not names and not args.all:
            raise TestHostError("name a host to take down, or pass --all")
        for name in names:
            down(name)
            _log(f"{name}: down")
    elif args.command == "reboot":
        started = time.monotonic()
        print(reboot(args.name, timeout=args.timeout).to_json(), flush=True)
        _log(f"{args.name}: rebooted in {time.monotonic() - started:.1f} s")
    elif args.command == "status":
        rows = status()
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        if not rows:
            print("no test hosts on this machine (`tests/testhost up NAME` boots one)")
        for row in rows:
            print(
                f"{row['name']:<24} {row['host'] or '-':<14} "
                f"{'running' if row['running'] else 'stopped':<8} boots={row['boots']}"
            )
    elif args.command == "exec":
        host = info(args.name)
        command = remote_command(args.cmd)
        if not command:
            os.execvp("ssh", ssh_argv(host, tty=True, user=args.user))
        return subprocess.run([*ssh_argv(host, user=args.user), command]).returncode
    elif args.command == "build":
        _require_supported()
        for path in (build_rootfs(), build_torch_site(), build_wheelhouse()):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
