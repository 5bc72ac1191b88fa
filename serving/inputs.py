"""The one inputs-hash helper: "are these the same inputs as last time?" as content hashes.

Every cache and change detector uses it: the model archive cache of
`synthdet serve` and of a replica bundle, the Pulumi bootstrap resource's
fingerprints, the service venv's stamp on a host. Contents are hashed, never
modification times, so a touched or moved file is not a change and an edited
one always is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def sha256_bytes(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(files: Iterable[Path], root: Path) -> str:
    """One hash over the names (relative to `root`) and contents of `files`, in name order."""
    digest = hashlib.sha256()
    for path in sorted(Path(f) for f in files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def canonical_json(value: Any) -> str:
    """A JSON value as one text for its contents (sorted keys, no spaces): what gets hashed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def inputs_hash(value: Any) -> str:
    """sha256 of a JSON value in canonical form (sorted keys): settings, stamps, fingerprints."""
    return sha256_bytes(canonical_json(value))
