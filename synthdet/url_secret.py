"""Where `synthdet deploy` takes a URL secret from: a file or the environment, not argv.

A command line is readable by every local user (`ps`, /proc/PID/cmdline) and
lands in shell history; a file can be 0600 and a process's environment is
readable by its own user and root only (/proc/PID/environ). So the secret is
read from `--url-secret-file PATH` (`-` for stdin) or SYNTHDET_URL_SECRET;
`--url-secret VALUE` still works, with a warning.
"""

from __future__ import annotations

import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bootstrap.steps.secret import SECRET_PATTERN

ENV_VAR = "SYNTHDET_URL_SECRET"
STDIN = Path("-")
ARGV_WARNING = (
    "--url-secret puts the secret in this command line, which every local user can read "
    f"(ps, /proc) and your shell history keeps; use --url-secret-file PATH or {ENV_VAR} instead."
)


class UrlSecretError(ValueError):
    """The secret could not be read, came from two places, or cannot be a URL path segment."""


@dataclass(frozen=True)
class UrlSecretChoice:
    """The secret to deploy (None: keep the host's, or make one) and a warning to show, if any."""

    value: str | None
    warning: str | None = None


def read_secret_file(path: Path) -> tuple[str, str | None]:
    """(the secret in `path`, a warning when others may read the file); `-` reads stdin."""
    if path == STDIN:
        return sys.stdin.readline().strip(), None
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise UrlSecretError(f"cannot read the URL secret from {path}: {exc}") from exc
    warning = None
    if stat.S_ISREG(mode) and mode & 0o077:
        warning = f"{path} can be read by other users (mode {stat.S_IMODE(mode):04o}): chmod 600 {path}"
    lines = text.strip().splitlines()
    return (lines[0].strip() if len(lines) == 1 else ""), warning


def choose_url_secret(*, flag: str | None, file: Path | None, environ: Mapping[str, str]) -> UrlSecretChoice:
    """The secret from exactly one of --url-secret-file, SYNTHDET_URL_SECRET or --url-secret."""
    from_env = environ.get(ENV_VAR, "").strip() or None
    sources: dict[str, object] = {"--url-secret-file": file, ENV_VAR: from_env, "--url-secret": flag}
    given = [name for name, value in sources.items() if value is not None]
    if len(given) > 1:
        raise UrlSecretError(
            f"the URL secret was given {len(given)} ways ({', '.join(given)}): give it one way"
        )
    if file is not None:
        value, warning = read_secret_file(file)
        source = f"--url-secret-file {file}"
    elif from_env is not None:
        value, warning, source = from_env, None, ENV_VAR
    elif flag is not None:
        value, warning, source = flag, ARGV_WARNING, "--url-secret"
    else:
        return UrlSecretChoice(None)
    if not SECRET_PATTERN.match(value):
        raise UrlSecretError(
            f"the URL secret from {source} must be one line of 16-128 letters, digits, '-' or '_' "
            "(it becomes a URL path segment)"
        )
    return UrlSecretChoice(value, warning)
