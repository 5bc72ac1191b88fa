"""A fake host for the deploy steps' unit tests: canned answers in, commands out.

`FakeRunner` satisfies `bootstrap.runner.Runner`. It keeps a table of files
(what `bootstrap.files` reads, hashes and places, with owner and mode) and
answers every other command from rules a test adds (`on(pattern, ...)`);
a command no rule knows fails the test, so a step that starts sending
something new is noticed. Every command is recorded for the assertions.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO

from bootstrap.runner import CommandError, RunResult, SentCallback, Stdin

Answer = tuple[int, str, str]
Responder = Callable[[re.Match[str]], Answer]


@dataclass
class HostFile:
    data: bytes
    owner: str = "root:root"
    mode: str = "644"


@dataclass
class FakeRunner:
    root: bool = True
    files: dict[str, HostFile] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    sudo_used: list[bool] = field(default_factory=list)
    envs: list[dict[str, str]] = field(default_factory=list)  # the environment of each command
    rules: list[tuple[re.Pattern[str], Responder]] = field(default_factory=list)

    # -- the Runner protocol ---------------------------------------------------
    @property
    def is_root(self) -> bool:
        return self.root

    @property
    def where(self) -> str:
        return "root@fake:22" if self.root else "synthdet@fake:22"

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
        self.commands.append(cmd)
        self.sudo_used.append(sudo)
        self.envs.append(dict(env or {}))
        data = stdin if isinstance(stdin, bytes) or stdin is None else _read(stdin)
        if on_sent and data is not None:
            on_sent(len(data))
        rc, out, err = self._answer(cmd, data)
        result = RunResult(cmd, rc, out, err)
        if check and rc != 0:
            raise CommandError(result)
        return result

    # -- setting up --------------------------------------------------------------
    def on(self, pattern: str, answer: Answer | Responder | str = "") -> FakeRunner:
        """Answer commands matching `pattern` (re.search): output text, (rc, out, err) or a function."""
        if isinstance(answer, str):
            text = answer
            responder: Responder = lambda _m: (0, text, "")  # noqa: E731
        elif isinstance(answer, tuple):
            fixed = answer
            responder = lambda _m: fixed  # noqa: E731
        else:
            responder = answer
        self.rules.insert(0, (re.compile(pattern), responder))  # later rules win
        return self

    def put(self, path: str, data: str | bytes, owner: str = "root:root", mode: str = "644") -> None:
        self.files[path] = HostFile(data.encode() if isinstance(data, str) else data, owner, mode)

    # -- assertions ----------------------------------------------------------------
    def ran(self, pattern: str) -> list[str]:
        return [c for c in self.commands if re.search(pattern, c)]

    def text(self, path: str) -> str:
        return self.files[path].data.decode()

    # -- the commands bootstrap.files sends ------------------------------------------
    def _answer(self, cmd: str, stdin: bytes | None) -> Answer:
        if m := re.search(r'mv -f "\$tmp" (\S+)', cmd):  # files.upload_atomic
            return self._place(cmd, shlex.split(m.group(1))[0], stdin or b"")
        if m := re.fullmatch(r"if \[ -f (\S+) \]; then sha256sum \S+; stat -c '%U:%G %a' \S+; fi", cmd):
            return self._probe(shlex.split(m.group(1))[0], with_stat=True)
        if m := re.fullmatch(r"if \[ -f (\S+) \]; then sha256sum \S+; fi", cmd):
            return self._probe(shlex.split(m.group(1))[0], with_stat=False)
        if m := re.fullmatch(r"if \[ -e (\S+) \]; then base64 < \S+; else echo MISSING; fi", cmd):
            found = self.files.get(shlex.split(m.group(1))[0])
            return 0, (base64.b64encode(found.data).decode() if found else "MISSING") + "\n", ""
        if m := re.fullmatch(r"chown (\S+) (\S+) && chmod (\d+) \S+", cmd):
            found = self.files[shlex.split(m.group(2))[0]]
            found.owner, found.mode = m.group(1), m.group(3)
            return 0, "", ""
        for pattern, responder in self.rules:
            if m := pattern.search(cmd):
                return responder(m)
        raise AssertionError(f"the fake host does not know this command:\n{cmd}")

    def _probe(self, path: str, *, with_stat: bool) -> Answer:
        found = self.files.get(path)
        if found is None:
            return 0, "", ""
        lines = [f"{hashlib.sha256(found.data).hexdigest()}  {path}"]
        if with_stat:
            lines.append(f"{found.owner} {found.mode}")
        return 0, "\n".join(lines) + "\n", ""

    def _place(self, script: str, target: str, data: bytes) -> Answer:
        want = re.search(r'if \[ "\$got" != (\S+) \]', script)
        owner = re.search(r'chown (\S+) "\$tmp"', script)
        mode = re.search(r'chmod (\d+) "\$tmp"', script)
        assert want and owner and mode, f"not a placement script:\n{script}"
        assert "umask 077" in script.split('cat > "$tmp"')[0], (
            "the temporary must be private from its first byte"
        )
        if hashlib.sha256(data).hexdigest() != shlex.split(want.group(1))[0]:
            return 3, "", "sha256 on the host is something else"
        self.files[target] = HostFile(data, owner.group(1), mode.group(1))
        return 0, "", ""


def _read(stream: IO[bytes]) -> bytes:
    return stream.read()
