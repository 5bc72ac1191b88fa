"""The local runner: `bootstrap.runner.Runner` acting on this machine itself.

Behind a cloud load balancer instances come and go and nobody logs in to
them: the instance's startup script runs the very same deploy steps at boot
through this runner (`bootstrap.boot_local`). Commands run exactly as over
SSH (`bootstrap.runner.command_argv`).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping

from bootstrap.runner import (
    CommandError,
    RunnerError,
    RunResult,
    SentCallback,
    Stdin,
    command_argv,
    copy_stream,
)


class LocalRunner:
    """Runs the deploy steps' commands here, as root (or through passwordless sudo)."""

    def __init__(self) -> None:
        self._is_root = os.geteuid() == 0

    @property
    def is_root(self) -> bool:
        return self._is_root

    @property
    def where(self) -> str:
        return "this machine"

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

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
        """Run a shell command here; with check=True a non-zero exit raises CommandError."""
        argv = command_argv(cmd, sudo=sudo, is_root=self.is_root, env=env)
        # Output goes to files, so a chatty command never blocks while stdin is streamed.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err)  # noqa: S603
            assert process.stdin is not None
            try:
                if stdin is not None:
                    copy_stream(stdin, process.stdin.write, on_sent)
            except BrokenPipeError:
                pass  # the command stopped reading; its exit status says why
            finally:
                process.stdin.close()
            try:
                rc = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired as exc:
                process.kill()
                process.wait()
                raise RunnerError(f"command timed out after {timeout_s} s: {cmd}") from exc
            out.seek(0)
            err.seek(0)
            result = RunResult(
                cmd, rc, out.read().decode(errors="replace"), err.read().decode(errors="replace")
            )
        if check and not result.ok:
            raise CommandError(result)
        return result
