"""A runner with the SSH `Connection`'s interface that acts on this machine itself.

The deploy steps only ever call `run`, `read_file`, `sha256` and `upload_atomic`
on their connection. Behind a cloud load balancer instances come and go and
nobody logs in to them: the instance's startup script runs the very same
steps at boot, through this runner (`bootstrap.boot_local`). Semantics match
`bootstrap.ssh.Connection`: commands run with `sh -c` and `LC_ALL=C`, wrapped
in `sudo -n` when not root; "uploads" land under a hidden temporary name
beside the target, are checked by sha256 and renamed into place.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath

from bootstrap.ssh import CommandError, RunResult, SshError, UploadVerificationError, sha256_file

UploadCallback = Callable[[int, int], None]


class LocalRunner:
    """Runs the deploy steps' commands here, as root (or through passwordless sudo)."""

    def __init__(self) -> None:
        self.is_root = os.geteuid() == 0

    # The steps use connections as context managers (`with _open(...) as conn`).
    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def argv(self, cmd: str, *, sudo: bool = True, env: Mapping[str, str] | None = None) -> list[str]:
        """The command line that runs `cmd` (a POSIX sh script) with privileges and env."""
        assignments = [f"{k}={v}" for k, v in (env or {}).items()]
        inner = ["env", "LC_ALL=C", *assignments, "sh", "-c", cmd]
        return ["sudo", "-n", *inner] if sudo and not self.is_root else inner

    def run(
        self,
        cmd: str,
        *,
        sudo: bool = True,
        check: bool = True,
        stdin: bytes | None = None,
        timeout_s: float | None = 600.0,
        env: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Run a shell command here; with check=True a non-zero exit raises CommandError."""
        try:
            proc = subprocess.run(  # noqa: S603 - the steps' own commands, as over SSH
                self.argv(cmd, sudo=sudo, env=env),
                input=stdin if stdin is not None else b"",
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise SshError(f"command timed out after {timeout_s} s: {cmd}") from exc
        result = RunResult(
            cmd, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        )
        if check and not result.ok:
            raise CommandError(result)
        return result

    # -- files (same shell probes as over SSH, so sudo and ownership behave alike) --
    def read_file(self, remote_path: str, *, sudo: bool = True) -> bytes | None:
        """A small file's bytes, or None when it does not exist."""
        q = shlex.quote(remote_path)
        text = self.run(f"if [ -e {q} ]; then base64 < {q}; else echo MISSING; fi", sudo=sudo).stdout.strip()
        return None if text == "MISSING" else base64.b64decode(text)

    def sha256(self, remote_path: str) -> str | None:
        from bootstrap.facts import parse_sha256sum

        q = shlex.quote(remote_path)
        return parse_sha256sum(self.run(f"if [ -f {q} ]; then sha256sum {q}; fi").stdout)

    def upload_atomic(
        self,
        source: Path | bytes,
        remote_path: str,
        *,
        mode: int = 0o644,
        owner: str = "root",
        group: str | None = None,
        callback: UploadCallback | None = None,
        expected_sha256: str | None = None,
    ) -> str:
        """Copy into place through a verified temporary beside the target; returns the sha256."""
        if isinstance(source, bytes):
            digest = hashlib.sha256(source).hexdigest()
            size = len(source)
        else:
            digest = expected_sha256 or sha256_file(source)
            size = source.stat().st_size
        target = PurePosixPath(remote_path)
        tmp = str(target.parent / f".{target.name}.part-{secrets.token_hex(4)}")
        qtmp = shlex.quote(tmp)
        if self.is_root:
            if isinstance(source, bytes):
                Path(tmp).write_bytes(source)
            else:
                shutil.copyfile(source, tmp)
        else:
            # Through sudo: stream the bytes into a root-owned file.
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
            self.run(f"cat > {qtmp}", stdin=data)
        if callback:
            callback(size, size)
        try:
            got = self.sha256(tmp)
            if got != digest:
                raise UploadVerificationError(
                    f"copy of {remote_path} is corrupt: sha256 {got}, expected {digest}; nothing was replaced"
                )
            grp = group or owner
            self.run(
                f"chown {shlex.quote(owner)}:{shlex.quote(grp)} {qtmp} && "
                f"chmod {mode:o} {qtmp} && mv -f {qtmp} {shlex.quote(remote_path)}"
            )
        except BaseException:
            with contextlib.suppress(SshError):
                self.run(f"rm -f {qtmp}", check=False, timeout_s=30)
            raise
        return digest
