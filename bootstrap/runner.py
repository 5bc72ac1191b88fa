"""The one interface every deploy step acts through: run a command on the host.

Two runners satisfy it: `bootstrap.ssh.Connection` (paramiko, for `synthdet
deploy` and the Pulumi provider) and `bootstrap.local_runner.LocalRunner`
(this machine, for a replica bootstrapping itself at boot). Both run a
command the same way: `sh -c` with `LC_ALL=C`, wrapped in `sudo -n` when the
login is not root, optionally fed a stream on stdin. File operations (read,
hash, verified atomic placement) are written once on top of `run`, in
`bootstrap.files`; steps never touch paramiko or subprocess themselves.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Protocol

# Bytes of a stdin stream sent so far (upload progress).
SentCallback = Callable[[int], None]
# What a command reads on stdin: nothing, a few bytes, or a file streamed in chunks.
Stdin = bytes | IO[bytes] | None
STREAM_CHUNK = 1 << 20


class RunnerError(RuntimeError):
    """Reaching or acting on the host failed; the message says what to do about it."""


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


class CommandError(RunnerError):
    """A command exited non-zero (with `check=True`)."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        tail = (result.stderr.strip() or result.stdout.strip())[-2000:]
        super().__init__(f"command failed on the host (exit {result.rc}): {result.cmd}\n{tail}")


class Runner(Protocol):
    """Where the deploy steps act: a host over SSH, or this machine."""

    @property
    def is_root(self) -> bool:
        """Whether the login is root (else privileged commands go through `sudo -n`)."""

    @property
    def where(self) -> str:
        """`user@host:port` or `this machine`, for messages."""

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
        """Run a POSIX shell script; with check=True a non-zero exit raises CommandError."""

    def close(self) -> None:
        """Release the connection (a no-op where there is none)."""


def command_argv(cmd: str, *, sudo: bool, is_root: bool, env: Mapping[str, str] | None = None) -> list[str]:
    """The argv both runners execute: `[sudo -n] env LC_ALL=C K=V... sh -c CMD`.

    `sudo -n` never prompts (there is no terminal): a login whose sudo wants a
    password fails at once with sudo's own message instead of hanging.
    """
    assignments = [f"{key}={value}" for key, value in (env or {}).items()]
    inner = ["env", "LC_ALL=C", *assignments, "sh", "-c", cmd]
    return ["sudo", "-n", *inner] if sudo and not is_root else inner


def command_line(cmd: str, *, sudo: bool, is_root: bool, env: Mapping[str, str] | None = None) -> str:
    """`command_argv` as one shell line (what SSH's exec request carries)."""
    return shlex.join(command_argv(cmd, sudo=sudo, is_root=is_root, env=env))


def copy_stream(
    source: bytes | IO[bytes], write: Callable[[bytes], object], on_sent: SentCallback | None = None
) -> int:
    """Write `source` through `write` in chunks, reporting the bytes sent; returns the total."""
    sent = 0
    if isinstance(source, bytes):
        write(source)
        sent = len(source)
        if on_sent:
            on_sent(sent)
        return sent
    while block := source.read(STREAM_CHUNK):
        write(block)
        sent += len(block)
        if on_sent:
            on_sent(sent)
    return sent
