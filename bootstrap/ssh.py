"""The SSH runner (paramiko): `bootstrap.runner.Runner` for a host over the network.

What it adds over a bare paramiko client:
- `open` waits for a host that is still booting (a fresh VM takes minutes)
  with backoff and a progress line, and fails with a message that says what
  to do (wrong user/key, changed host key, unreachable host).
- Host keys are recorded in our own known_hosts on first contact and a
  changed key is refused (trust on first use, like `ssh` itself).
- `run` streams stdin in chunks (uploads report progress), reads stdout and
  stderr together (a chatty command never stalls on a full window) and
  wraps the command in `sudo -n` when the login is not root.
"""

from __future__ import annotations

import io
import selectors
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

import paramiko

from bootstrap.api import SshTarget
from bootstrap.runner import (
    CommandError,
    RunnerError,
    RunResult,
    SentCallback,
    Stdin,
    command_line,
    copy_stream,
)
from serving.polling import Retrying, retry

# One human-readable line about what the connection is doing (waiting, retrying).
StatusCallback = Callable[[str], None]
# A fresh cloud VM answers SSH before cloud-init has installed the key: a few
# refusals are normal, this many in a row are not.
AUTH_ATTEMPTS = 4
BACKOFF_MAX_S = 15.0
# One attempt: TCP connect, then the banner, then authentication, each this long at most.
CONNECT_TIMEOUT_S = 10.0
# SSH silent this long: say (once) who the firewall admits and how to change that, then keep
# waiting. A VM boots well within it; a firewall that admits another address never answers.
SILENT_WARNING_S = 60.0
# Said when the caller knows nothing about the firewall in front of the host.
GENERIC_FIREWALL_HINT = (
    "check that the host is running and that whatever filters its traffic (a cloud firewall rule "
    "or security group, the host's own firewall) admits SSH from this machine's public address"
)


class SshError(RunnerError):
    """Anything SSH-related; the message says what to do about it."""


class SshAuthError(SshError):
    pass


class HostKeyChangedError(SshError):
    pass


class SshTimeoutError(SshError):
    pass


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

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        keys = paramiko.HostKeys()
        if self.known_hosts.exists():
            keys.load(str(self.known_hosts))
        keys.add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        keys.save(str(self.known_hosts))


# Errors that mean "not up yet, try again": refused, unreachable, sshd still
# starting (banner/handshake errors), a connection reset while booting.
_NOT_UP_YET = (
    paramiko.ssh_exception.NoValidConnectionsError,
    socket.timeout,
    TimeoutError,
    ConnectionError,
    EOFError,
    OSError,
    paramiko.SSHException,
)


def silence_line(target: SshTarget, silent_s: float, wait_timeout_s: float) -> str:
    """One line for an SSH port that has not answered for a while: who may get in, what to do."""
    hint = target.firewall_hint or GENERIC_FIREWALL_HINT
    return (
        f"SSH on {target.host}:{target.port} has not answered for {silent_s:.0f} s: {hint}; "
        f"still waiting (up to {wait_timeout_s:.0f} s in all)"
    )


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, paramiko.AuthenticationException):
        return "key refused (the host may still be installing it)"
    return (str(exc) or type(exc).__name__) if exc else "unknown"


class Connection:
    """An open SSH session to one host; a `Runner`. Use as a context manager."""

    def __init__(self, client: paramiko.SSHClient, target: SshTarget) -> None:
        self.client = client
        self.target = target

    # -- lifecycle -------------------------------------------------------
    @classmethod
    def open(
        cls,
        target: SshTarget,
        *,
        wait_timeout_s: float,
        status: StatusCallback | None = None,
        connect_timeout_s: float | None = None,
        silent_warning_s: float | None = None,
    ) -> Connection:
        """Connect, waiting with backoff until the host accepts SSH or time runs out.

        After `silent_warning_s` (default SILENT_WARNING_S) without an answer, one status
        line says who the firewall admits (`target.firewall_hint`); the wait goes on."""
        pkey = load_private_key(target)
        known_hosts = Path(target.known_hosts).expanduser()
        auth_failures = 0
        started = time.monotonic()
        silent_after = SILENT_WARNING_S if silent_warning_s is None else silent_warning_s
        attempt_s = CONNECT_TIMEOUT_S if connect_timeout_s is None else connect_timeout_s
        said_silent = False

        def connect() -> paramiko.SSHClient:
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
                    timeout=attempt_s,
                    banner_timeout=attempt_s,
                    auth_timeout=attempt_s,
                    allow_agent=False,
                    look_for_keys=False,
                )
            except BaseException:
                client.close()
                raise
            return client

        def worth_retrying(exc: BaseException) -> bool:
            nonlocal auth_failures
            if isinstance(exc, paramiko.BadHostKeyException):
                return False
            if isinstance(exc, paramiko.AuthenticationException):
                auth_failures += 1
                return auth_failures < AUTH_ATTEMPTS
            return isinstance(exc, _NOT_UP_YET)

        def report(attempt: Retrying) -> None:
            nonlocal said_silent
            if not status:
                return
            error = attempt.error
            status(
                f"waiting for SSH on {target.host}:{target.port} (attempt {attempt.attempt}: "
                f"{_describe(error)}; retrying in {attempt.wait_s:.0f} s)"
            )
            silent_s = time.monotonic() - started
            # A refused key means sshd answered: only silence points at the firewall.
            answered = isinstance(error, paramiko.AuthenticationException)
            if not said_silent and not answered and silent_s >= silent_after:
                said_silent = True
                status(silence_line(target, silent_s, wait_timeout_s))

        try:
            client = retry(
                connect,
                timeout_s=wait_timeout_s,
                every_s=1.0,
                max_every_s=BACKOFF_MAX_S,
                when=worth_retrying,
                on_retry=report,
            )
        except paramiko.BadHostKeyException as exc:
            name = known_hosts_name(target.host, target.port)
            raise HostKeyChangedError(
                f"the host key of {name} changed since it was recorded in {known_hosts} "
                f"(got {exc.key.get_name()} {exc.key.fingerprint}). This is what a "
                "man-in-the-middle looks like, or the host was rebuilt. If you know it "
                f"was rebuilt, forget the old key with: ssh-keygen -R '{name}' -f {known_hosts}"
            ) from exc
        except paramiko.AuthenticationException as exc:
            raise SshAuthError(
                f"{target.user}@{target.host}:{target.port} refused the key ({exc}). "
                "Check --user (the image's login user, e.g. ubuntu, debian, root) "
                "and --key (the private key whose public half is on the host)."
            ) from exc
        except _NOT_UP_YET as exc:
            raise SshTimeoutError(
                f"no SSH on {target.host}:{target.port} after {wait_timeout_s:.0f} s "
                f"(last error: {_describe(exc)}). Check that the host is running, the "
                "address and port are right, and a firewall allows SSH from this machine."
            ) from exc
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)  # notice a dead peer during long steps
        if status:
            status(f"SSH to {target.user}@{target.host}:{target.port} is up")
        return cls(client, target)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_root(self) -> bool:
        return self.target.user == "root"

    @property
    def where(self) -> str:
        return f"{self.target.user}@{self.target.host}:{self.target.port}"

    # -- commands --------------------------------------------------------
    def run(
        self,
        cmd: str,
        *,
        sudo: bool = True,
        check: bool = True,
        stdin: Stdin = None,
        timeout_s: float | None = 600.0,
        env: Mapping[str, str] | None = None,
        on_sent: SentCallback | None = None,
    ) -> RunResult:
        """Run a shell command on the host; with check=True a non-zero exit raises CommandError."""
        line = command_line(cmd, sudo=sudo, is_root=self.is_root, env=env)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            transport = self.client.get_transport()
            if transport is None or not transport.is_active():
                raise EOFError("the SSH transport is closed")
            channel = transport.open_session(timeout=30)
            try:
                channel.exec_command(line)
                if stdin is not None:
                    _send(channel, stdin, on_sent)
                out, err = _drain(channel, deadline)
                rc = channel.recv_exit_status()
                if rc == -1:  # paramiko's "no exit status": the connection went away first
                    raise EOFError("the connection closed before the command exited")
            finally:
                channel.close()
        except TimeoutError as exc:
            raise SshError(f"command timed out after {timeout_s} s on {self.where}: {cmd}") from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SshError(
                f"SSH connection to {self.target.host} lost while running: {cmd[:200]} ({exc}). "
                "Rerun the deploy: every step is idempotent."
            ) from exc
        result = RunResult(cmd, rc, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and not result.ok:
            raise CommandError(result)
        return result


def _send(channel: paramiko.Channel, stdin: bytes | IO[bytes], on_sent: SentCallback | None) -> None:
    """Stream stdin to the command; one that stopped reading (its disk is full, say) ends
    the stream, and its exit status says why."""
    try:
        copy_stream(stdin, channel.sendall, on_sent)
        channel.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException):
        # The exit status follows the closed stream within moments, unless the
        # connection itself is gone.
        if not channel.status_event.wait(5):
            raise


def _drain(channel: paramiko.Channel, deadline: float | None) -> tuple[bytes, bytes]:
    """Read stdout and stderr as they come until the command exits and both are empty."""
    out, err = bytearray(), bytearray()
    # A selector, not select.select(): that fails outright in a process holding more than
    # 1024 file descriptors (a long Pulumi run, a test session).
    with selectors.DefaultSelector() as selector:
        selector.register(channel, selectors.EVENT_READ)
        while True:
            if channel.recv_ready():
                out += channel.recv(65536)
            elif channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            elif channel.exit_status_ready():
                return bytes(out), bytes(err)
            else:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError
                # Wakes at once on stdout; stderr and the exit status are polled briefly.
                selector.select(0.01)
