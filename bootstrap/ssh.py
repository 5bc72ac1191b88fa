"""The one SSH runner every deploy step uses (steps never touch paramiko).

What it adds over a bare paramiko client:
- `connect` waits for a host that is still booting (a fresh VM takes minutes)
  with backoff and a progress line, and fails with a message that says what
  to do (wrong user/key, changed host key, unreachable host).
- Host keys are recorded in our own known_hosts on first contact and a
  changed key is refused (trust on first use, like `ssh` itself).
- `run` returns rc/stdout/stderr and can raise on failure (`check=True`),
  wrapping the command in `sudo -n` when the login user is not root.
- `upload_atomic` uploads to a temporary name beside the target, verifies the
  sha256 on the host and renames it into place, so a partial or corrupted
  upload is never what a service reads.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import secrets
import shlex
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import paramiko

from bootstrap.api import SshTarget

# (bytes sent, total bytes) during an upload.
UploadCallback = Callable[[int, int], None]
# One human-readable line about what the connection is doing (waiting, retrying).
StatusCallback = Callable[[str], None]


class SshError(RuntimeError):
    """Anything SSH-related; the message says what to do about it."""


class SshAuthError(SshError):
    pass


class HostKeyChangedError(SshError):
    pass


class SshTimeoutError(SshError):
    pass


class UploadVerificationError(SshError):
    """The file on the host does not hash to what we sent."""


@dataclass(frozen=True)
class RunResult:
    cmd: str
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self) -> RunResult:
        if self.rc != 0:
            raise CommandError(self)
        return self


class CommandError(SshError):
    def __init__(self, result: RunResult) -> None:
        self.result = result
        tail = (result.stderr.strip() or result.stdout.strip())[-2000:]
        super().__init__(f"command failed on the host (exit {result.rc}): {result.cmd}\n{tail}")


def known_hosts_name(host: str, port: int) -> str:
    """The name OpenSSH uses in known_hosts (non-default ports are bracketed)."""
    return host if port == 22 else f"[{host}]:{port}"


def load_private_key(target: SshTarget) -> paramiko.PKey:
    """The target's key from a file or from PEM text (Pulumi passes key material)."""
    try:
        if target.key_pem:
            return _key_from_text(target.key_pem)
        if target.key_path is not None:
            return paramiko.PKey.from_path(Path(target.key_path).expanduser())
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise SshAuthError(
            f"cannot read the SSH private key ({exc}); pass an unencrypted OpenSSH/PEM private key with --key"
        ) from exc
    raise SshAuthError("no SSH key given: pass --key KEYFILE")


def _key_from_text(pem: str) -> paramiko.PKey:
    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(pem))
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(f"{cls.__name__}: {exc}")
    raise ValueError("; ".join(errors))


class _RecordNewHostKey(paramiko.MissingHostKeyPolicy):
    """Trust on first use: remember an unknown host's key in our known_hosts."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey):
        keys = paramiko.HostKeys()
        if self.known_hosts.exists():
            keys.load(str(self.known_hosts))
        keys.add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        keys.save(str(self.known_hosts))


# Errors that mean "not up yet, try again": refused, unreachable, sshd still
# starting (banner/handshake errors), a connection reset while booting.
_RETRYABLE = (
    paramiko.ssh_exception.NoValidConnectionsError,
    socket.timeout,
    TimeoutError,
    ConnectionError,
    EOFError,
    OSError,
    paramiko.SSHException,
)


class Connection:
    """An open SSH session to one host. Use as a context manager."""

    def __init__(self, client: paramiko.SSHClient, target: SshTarget) -> None:
        self.client = client
        self.target = target
        self._sftp: paramiko.SFTPClient | None = None

    # -- lifecycle -------------------------------------------------------
    @classmethod
    def open(
        cls,
        target: SshTarget,
        *,
        wait_timeout_s: float = 600.0,
        status: StatusCallback | None = None,
        connect_timeout_s: float = 10.0,
    ) -> Connection:
        """Connect, waiting with backoff until the host accepts SSH or time runs out."""
        pkey = load_private_key(target)
        known_hosts = Path(target.known_hosts).expanduser()
        deadline = time.monotonic() + wait_timeout_s
        delay = 1.0
        attempt = 0
        auth_failures = 0
        while True:
            attempt += 1
            client = paramiko.SSHClient()
            if known_hosts.exists():
                client.load_host_keys(str(known_hosts))
            client.set_missing_host_key_policy(_RecordNewHostKey(known_hosts))
            try:
                client.connect(
                    target.host,
                    port=target.port,
                    username=target.user,
                    pkey=pkey,
                    timeout=connect_timeout_s,
                    banner_timeout=connect_timeout_s,
                    auth_timeout=connect_timeout_s,
                    allow_agent=False,
                    look_for_keys=False,
                )
                transport = client.get_transport()
                if transport is not None:
                    transport.set_keepalive(15)  # notice a dead peer during long steps
                if attempt > 1 and status:
                    status(f"SSH to {target.user}@{target.host}:{target.port} is up")
                return cls(client, target)
            except paramiko.BadHostKeyException as exc:
                client.close()
                name = known_hosts_name(target.host, target.port)
                raise HostKeyChangedError(
                    f"the host key of {name} changed since it was recorded in {known_hosts} "
                    f"(got {exc.key.get_name()} {exc.key.fingerprint}). This is what a "
                    "man-in-the-middle looks like, or the host was rebuilt. If you know it "
                    f"was rebuilt, forget the old key with: ssh-keygen -R '{name}' -f "
                    f"{known_hosts}"
                ) from exc
            except paramiko.AuthenticationException as exc:
                client.close()
                # A fresh cloud VM answers SSH before cloud-init installs the
                # key, so a few early refusals are normal; many are not.
                auth_failures += 1
                if auth_failures >= 4 or time.monotonic() + delay > deadline:
                    raise SshAuthError(
                        f"{target.user}@{target.host}:{target.port} refused the key ({exc}). "
                        "Check --user (the image's login user, e.g. ubuntu, debian, root) "
                        "and --key (the private key whose public half is on the host)."
                    ) from exc
                why = "key refused (the host may still be installing it)"
            except _RETRYABLE as exc:
                client.close()
                why = str(exc) or type(exc).__name__
            left = deadline - time.monotonic()
            if left <= 0:
                raise SshTimeoutError(
                    f"no SSH on {target.host}:{target.port} after {wait_timeout_s:.0f} s "
                    f"({attempt} attempts; last error: {why}). Check that the host is "
                    "running, the address and port are right, and a firewall allows SSH "
                    "from this machine."
                )
            if status:
                status(
                    f"waiting for SSH on {target.host}:{target.port} (attempt {attempt}: "
                    f"{why}; retrying in {min(delay, left):.0f} s)"
                )
            time.sleep(min(delay, max(left, 0.0)))
            delay = min(delay * 2, 15.0)

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        self.client.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_root(self) -> bool:
        return self.target.user == "root"

    # -- commands --------------------------------------------------------
    def wrap(self, cmd: str, *, sudo: bool = True, env: Mapping[str, str] | None = None) -> str:
        """The shell line that runs `cmd` (a POSIX sh script) with privileges and env."""
        env_prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        inner = f"env LC_ALL=C {env_prefix} sh -c {shlex.quote(cmd)}"
        if sudo and not self.is_root:
            # -n: never prompt (there is no terminal); a password-only sudo fails clearly.
            return f"sudo -n {inner}"
        return inner

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
        """Run a shell command on the host; with check=True a non-zero exit raises."""
        line = self.wrap(cmd, sudo=sudo, env=env)
        try:
            chan_in, chan_out, chan_err = self.client.exec_command(line, timeout=timeout_s)
            if stdin is not None:
                chan_in.write(stdin)
                chan_in.channel.shutdown_write()
            out = chan_out.read()
            err = chan_err.read()
            rc = chan_out.channel.recv_exit_status()
        except TimeoutError as exc:
            raise SshError(f"command timed out after {timeout_s} s on the host: {cmd}") from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SshError(
                f"SSH connection to {self.target.host} lost while running: {cmd} ({exc}). "
                "Rerun the deploy: every step is idempotent."
            ) from exc
        result = RunResult(cmd, rc, out.decode(errors="replace"), err.decode(errors="replace"))
        return result.check() if check else result

    # -- files -----------------------------------------------------------
    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def put(
        self, source: IO[bytes], remote_path: str, size: int, callback: UploadCallback | None = None
    ) -> None:
        """Copy a stream to a path the login user may write (no sudo over SFTP)."""
        try:
            self.sftp.putfo(source, remote_path, file_size=size, callback=callback, confirm=True)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SshError(
                f"upload to {self.target.host}:{remote_path} failed ({exc}). Rerun the deploy: "
                "a partial upload is never moved into place."
            ) from exc

    def read_file(self, remote_path: str, *, sudo: bool = True) -> bytes | None:
        """A small file's bytes, or None when it does not exist."""
        q = shlex.quote(remote_path)
        res = self.run(f"if [ -e {q} ]; then base64 < {q}; else echo MISSING; fi", sudo=sudo)
        text = res.stdout.strip()
        if text == "MISSING":
            return None
        return base64.b64decode(text)

    def sha256(self, remote_path: str) -> str | None:
        """sha256 of a file on the host, or None when it does not exist."""
        from bootstrap.facts import parse_sha256sum

        q = shlex.quote(remote_path)
        res = self.run(f"if [ -f {q} ]; then sha256sum {q}; fi")
        return parse_sha256sum(res.stdout)

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
        """Upload, verify sha256 on the host, then rename into place; returns the sha256.

        The bytes land in a hidden temporary file in the target's directory
        (same filesystem, so the final `mv` is an atomic rename). Whatever goes
        wrong before the rename (dropped connection, disk full, corruption)
        leaves the old file untouched; the temporary is removed or, if the
        connection died, cleaned up by the next run (`.*.part-*`).
        """
        if isinstance(source, bytes):
            digest = hashlib.sha256(source).hexdigest()
            size = len(source)
            stream: IO[bytes] = io.BytesIO(source)
        else:
            digest = expected_sha256 or sha256_file(source)
            size = source.stat().st_size
            stream = source.open("rb")
        target = PurePosixPath(remote_path)
        tmp = str(target.parent / f".{target.name}.part-{secrets.token_hex(4)}")
        try:
            if self.is_root:
                self.put(stream, tmp, size, callback)
            else:
                # SFTP runs as the login user: stage in its own space, then let
                # sudo move it beside the target (possibly across filesystems).
                staging = f"/var/tmp/synthdet-upload-{secrets.token_hex(6)}"
                self.put(stream, staging, size, callback)
                self.run(f"mv -f {shlex.quote(staging)} {shlex.quote(tmp)}")
        finally:
            stream.close()
        qtmp = shlex.quote(tmp)
        try:
            got = self.sha256(tmp)
            if got != digest:
                raise UploadVerificationError(
                    f"upload of {remote_path} is corrupt: sha256 on the host is {got}, "
                    f"expected {digest}. Nothing was replaced; rerun the deploy."
                )
            grp = group or owner
            self.run(
                f"chown {shlex.quote(owner)}:{shlex.quote(grp)} {qtmp} && "
                f"chmod {mode:o} {qtmp} && mv -f {qtmp} {shlex.quote(remote_path)}"
            )
        except BaseException:
            # Best effort: if the connection is gone the next run sweeps it up.
            with contextlib.suppress(SshError):
                self.run(f"rm -f {qtmp}", check=False, timeout_s=30)
            raise
        return digest


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
