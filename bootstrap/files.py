"""File operations on the host, written once on top of `Runner.run`.

Every byte a deploy places on a host goes through `upload_atomic`: it is
streamed through `sudo` into a hidden temporary file beside the target,
created under `umask 077` (root-owned, 0600, readable by nobody else at any
moment, whatever the login user), checked with sha256sum on the host, given
its owner and mode, and only then renamed over the target. A dropped
connection, a full disk or corruption leaves the old file as it was; the
temporary is removed by the same script, or swept by the next deploy's
layout step (`PART_GLOB`).
"""

from __future__ import annotations

import base64
import io
import re
import secrets
import shlex
from pathlib import Path, PurePosixPath
from typing import IO

from bootstrap.runner import Runner, RunnerError, SentCallback
from serving.inputs import sha256_bytes, sha256_file

# Hidden temporaries of uploads in flight (`.NAME.part-XXXXXXXX`).
PART_GLOB = ".*.part-*"
_MISMATCH_EXIT = 3


class UploadVerificationError(RunnerError):
    """The file on the host does not hash to what was sent; nothing was replaced."""


def parse_sha256sum(text: str) -> str | None:
    """`sha256sum FILE` -> the hex digest; empty output (no file) -> None."""
    m = re.match(r"\s*\\?([0-9a-f]{64})\s", text + " ")
    return m.group(1) if m else None


def read_file(runner: Runner, path: str, *, sudo: bool = True) -> bytes | None:
    """A small file's bytes, or None when it does not exist."""
    q = shlex.quote(path)
    text = runner.run(f"if [ -e {q} ]; then base64 < {q}; else echo MISSING; fi", sudo=sudo).stdout.strip()
    return None if text == "MISSING" else base64.b64decode(text)


def sha256(runner: Runner, path: str) -> str | None:
    """sha256 of a file on the host, or None when it does not exist."""
    q = shlex.quote(path)
    return parse_sha256sum(runner.run(f"if [ -f {q} ]; then sha256sum {q}; fi").stdout)


def part_path(path: str) -> str:
    target = PurePosixPath(path)
    return str(target.parent / f".{target.name}.part-{secrets.token_hex(4)}")


def _placement_script(tmp: str, target: str, digest: str, owner: str, group: str, mode: int) -> str:
    q = shlex.quote
    return "\n".join(
        [
            "set -e",
            "umask 077",  # the temporary is root's and 0600 from its first byte
            f"tmp={q(tmp)}",
            "trap 'rm -f \"$tmp\"' EXIT",
            'cat > "$tmp"',
            'got=$(sha256sum "$tmp" | cut -d" " -f1)',
            f'if [ "$got" != {q(digest)} ]; then echo "sha256 on the host is $got" >&2; '
            f"exit {_MISMATCH_EXIT}; fi",
            f'chown {q(owner)}:{q(group)} "$tmp"',
            f'chmod {mode:o} "$tmp"',
            f'mv -f "$tmp" {q(target)}',
            "trap - EXIT",
        ]
    )


def _open(source: Path | bytes) -> IO[bytes]:
    return io.BytesIO(source) if isinstance(source, bytes) else Path(source).open("rb")


def upload_atomic(
    runner: Runner,
    source: Path | bytes,
    path: str,
    *,
    mode: int = 0o644,
    owner: str = "root",
    group: str | None = None,
    on_sent: SentCallback | None = None,
    expected_sha256: str | None = None,
) -> str:
    """Place `source` at `path` with this owner and mode, verified and atomically; its sha256."""
    digest = sha256_bytes(source) if isinstance(source, bytes) else expected_sha256 or sha256_file(source)
    script = _placement_script(part_path(path), path, digest, owner, group or owner, mode)
    with _open(source) as stream:
        result = runner.run(script, stdin=stream, check=False, timeout_s=3600, on_sent=on_sent)
    if result.rc == _MISMATCH_EXIT:
        raise UploadVerificationError(
            f"upload of {path} to {runner.where} is corrupt ({result.stderr.strip()}, expected "
            f"{digest}). Nothing was replaced; rerun the deploy."
        )
    if not result.ok:
        raise RunnerError(
            f"could not place {path} on {runner.where} (exit {result.rc}): "
            f"{(result.stderr or result.stdout).strip()[-600:]}. Nothing was replaced; check the "
            "host's free disk space (df -h) and rerun the deploy."
        )
    return digest


def ensure_file(
    runner: Runner,
    path: str,
    content: str | bytes,
    *,
    mode: int = 0o644,
    owner: str = "root",
    group: str | None = None,
) -> bool:
    """Make `path` hold exactly `content` with this owner and mode; True when anything changed.

    One probe reads the hash, owner and mode; a wrong owner or mode alone is
    corrected in place, without a rewrite.
    """
    data = content.encode() if isinstance(content, str) else content
    group = group or owner
    q = shlex.quote(path)
    probe = runner.run(f"if [ -f {q} ]; then sha256sum {q}; stat -c '%U:%G %a' {q}; fi").stdout.splitlines()
    have = parse_sha256sum(probe[0]) if probe else None
    if have != sha256_bytes(data):
        upload_atomic(runner, data, path, mode=mode, owner=owner, group=group)
        return True
    if len(probe) > 1 and probe[1].strip() != f"{owner}:{group} {mode:o}":
        runner.run(f"chown {shlex.quote(owner)}:{shlex.quote(group)} {q} && chmod {mode:o} {q}")
        return True
    return False
