"""The shared root filesystem every test host boots: debootstrap, image packages, neutral identity."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

from tests.support.testhost.common import (
    BASE_PACKAGES,
    CACHE_ROOT,
    DEFAULT_MIRROR,
    GUEST_SITE,
    IMAGE_PACKAGES,
    RECIPE_VERSION,
    SUITE,
    TestHostError,
    _flock,
    _log,
    _remove_tree,
    _require_supported,
    _run,
    _short_hash,
    ensure_tools,
)


def _apt_mirror() -> str:
    """The Debian mirror this machine uses (deb822 .sources or one-line .list files)."""
    apt = Path("/etc/apt")
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file() or path.suffix not in (".list", ".sources"):
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = _deb822_fields(stanza)
                types, suites = fields.get("types", "").split(), fields.get("suites", "").split()
                if "deb" in types and SUITE in suites and fields.get("uris"):
                    return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                parts = [p for p in line.split() if not p.startswith("[")]
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                    return parts[1]
    return DEFAULT_MIRROR


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields = {}
    for line in stanza.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith(("#", " ", "\t")):
            fields[key.strip().lower()] = value.strip()
    return fields


def rootfs_path() -> Path:
    key = _short_hash(
        {"recipe": RECIPE_VERSION, "suite": SUITE, "base": BASE_PACKAGES, "image": IMAGE_PACKAGES}
    )
    return CACHE_ROOT / f"rootfs-{key}"


def build_rootfs() -> Path:
    """The cached Debian root filesystem (overlay lower layer); builds it if missing.

    Built in a temp dir and renamed at the end, so an interrupted build is never used.
    """
    final = rootfs_path()
    if final.is_dir():
        return final
    _require_supported()
    ensure_tools()
    with _flock(CACHE_ROOT / ".build.lock", 1800, "the cache build lock"):
        if final.is_dir():  # built by a concurrent caller while we waited
            return final
        tmp = final.with_name(f".{final.name}.tmp")
        _remove_tree(tmp)  # leftovers of an interrupted build (unmounts its /proc first)
        log_path = CACHE_ROOT / "logs" / f"{final.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
        started = time.monotonic()
        try:
            _debootstrap(tmp, log_path)
            _install_image_packages(tmp, log_path)
            _customize_rootfs(tmp)
        except BaseException:
            _log(f"rootfs build failed; log: {log_path}")
            with contextlib.suppress(TestHostError):
                _remove_tree(tmp)
            raise
        tmp.rename(final)
        _log(f"rootfs ready in {time.monotonic() - started:.0f} s: {final}")
    return final


def _debootstrap(target: Path, log_path: Path) -> None:
    mirror = _apt_mirror()
    _log(f"building the test host rootfs with debootstrap from {mirror} (1-2 min, once)...")
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            target,
            mirror,
        ],
        timeout=1200,
        log_path=log_path,
        what="debootstrap",
    )


def _install_image_packages(root: Path, log_path: Path) -> None:
    """Bake in what the image carries. policy-rc.d keeps nginx from starting on *this*
    machine's network during the install; Java's postinst needs /proc."""
    _log(f"installing {' '.join(IMAGE_PACKAGES)} into the rootfs...")
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    _run(["mount", "-t", "proc", "proc", root / "proc"], timeout=30)
    try:
        env = ["env", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C"]
        _run(
            [
                "chroot",
                root,
                *env,
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                *IMAGE_PACKAGES,
            ],
            timeout=1200,
            log_path=log_path,
            what="apt-get install in the rootfs",
        )
        _run(["chroot", root, "apt-get", "clean"], timeout=60, log_path=log_path)
    finally:
        _run(["umount", root / "proc"], check=False, timeout=30)
        policy.unlink(missing_ok=True)


def _customize_rootfs(root: Path) -> None:
    """Make the shared image host-neutral; per-host identity goes into each host's layer."""
    (root / "etc/hostname").unlink(missing_ok=True)  # so `-M NAME` names the guest
    for key in (root / "etc/ssh").glob("ssh_host_*"):  # generated per host at `up`
        key.unlink()
    (root / "etc/machine-id").write_text("")  # written per host at `up`
    dbus_id = root / "var/lib/dbus/machine-id"  # else every host shares D-Bus's id
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    # minbase has no /etc/hosts; `up` appends the host's own name to this one.
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n")
    (root / GUEST_SITE.lstrip("/")).mkdir(parents=True, exist_ok=True)  # torch bind target
    # The journal persists on the host's disk layer; keep it small like a cloud image would.
    journald = root / "etc/systemd/journald.conf.d"
    journald.mkdir(parents=True, exist_ok=True)
    (journald / "synthdet-testhost.conf").write_text("[Journal]\nSystemMaxUse=64M\n")
    (root / "etc/synthdet-testhost").write_text(
        f"recipe={RECIPE_VERSION}\nbuilt={time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
    )
