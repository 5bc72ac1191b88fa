"""The URL secret: access control for a client that cannot send headers.

The phone app POSTs to the URL exactly as scanned, with no Authorization
header, so the secret travels as a path segment that nginx checks; any other
path is a 404. It is stored on the host (root-only) so reruns keep the URL
(and the QR code users already scanned) stable; pass a new one to rotate.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from bootstrap import files
from bootstrap.steps.base import SECRET_FILE, DeployError, Run, ensure_file
from bootstrap.steps.layout import Layout
from bootstrap.steps.step import Done, Step

# URL-safe base64 alphabet only: passes .NET Uri.IsWellFormedUriString, needs no escaping
# in nginx locations, and is long enough that guessing is hopeless.
SECRET_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


@dataclass(frozen=True)
class Secret:
    """The URL secret, as stored on the host."""

    value: str


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def check_secret(secret: str) -> str:
    if not SECRET_PATTERN.match(secret):
        raise DeployError(
            "the URL secret must be 16-128 characters of letters, digits, '-' or '_' "
            "(it becomes a URL path segment): pass another --url-secret, or none to keep or "
            "create one"
        )
    return secret


def apply(run: Run, layout: Layout) -> Done[Secret]:
    stored = files.read_file(run.conn, SECRET_FILE)
    text = stored.decode(errors="replace").strip() if stored else ""
    current = text if SECRET_PATTERN.match(text) else None
    secret = check_secret(run.options.url_secret or current or new_secret())
    changed = ensure_file(run, SECRET_FILE, secret + "\n", mode=0o600)
    if current is None:
        detail = "created"
    elif changed:
        detail = "rotated (the old URL and QR code stop working)"
    else:
        detail = "kept"
    return Done(changed, detail, Secret(secret))


# Its file is in the layout's /etc/synthdet.
STEP = Step("url-secret", apply)
