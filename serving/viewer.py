"""The web viewer: what a browser gets from a GET of the endpoint URL.

One self-contained HTML page (no CDN, fonts or scripts from elsewhere: the host
may be on a network without internet) that streams the phone's camera to the
same URL, like the app, and draws the detections. `synthdet serve` answers
with it directly; on a deployed host nginx serves the same file. Its inline
script and style are allowed by hash in a Content-Security-Policy, so nothing
else can run on the page.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from importlib import resources

CONTENT_TYPE = "text/html; charset=utf-8"


@lru_cache(maxsize=1)
def viewer_page() -> bytes:
    return resources.files("serving").joinpath("static", "viewer.html").read_bytes()


def _hashes(tag: str, page: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'" for block in blocks
    )


@lru_cache(maxsize=1)
def content_security_policy() -> str:
    """Only the page's own script and style run; it talks to its own origin and nothing else."""
    page = viewer_page().decode("utf-8")
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {_hashes('script', page)}",
            f"style-src {_hashes('style', page)}",
            "img-src 'self' data: blob:",
            "media-src 'self' blob: mediastream:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
