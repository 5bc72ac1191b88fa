"""Content hashes of what a deploy ships: the bootstrap resource's change detector.

They are computed in the program (on every preview), not in the provider's
diff, so Pulumi's plan shows "update" exactly when a checkpoint, label map,
the handler's source or the serving settings changed, and nothing when a
file was only moved or touched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bootstrap.api import ModelSpec

HANDLER_DIR = Path(__file__).resolve().parents[1] / "handler"
# What ends up in the model archive from the handler package.
HANDLER_SUFFIXES = (".py", ".json")
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(root: Path, suffixes: Iterable[str] = HANDLER_SUFFIXES) -> str:
    """One hash over the relative names and contents of the matching files under `root`."""
    digest = hashlib.sha256()
    wanted = tuple(suffixes)
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        if path.suffix not in wanted or "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def deploy_fingerprints(
    models: Sequence[ModelSpec], serving: dict[str, Any], handler_dir: Path = HANDLER_DIR
) -> dict[str, str]:
    """`model:<name>`, `label_map:<name>`, `handler`, `serving` -> sha256."""
    prints: dict[str, str] = {}
    for spec in models:
        if not Path(spec.checkpoint).is_file():
            raise FileNotFoundError(
                f"model {spec.name!r}: checkpoint {spec.checkpoint} does not exist "
                "(synthdet:model / synthdet:extraModels)"
            )
        prints[f"model:{spec.name}"] = sha256_file(spec.checkpoint)
        if spec.label_map is not None:
            prints[f"label_map:{spec.name}"] = sha256_file(spec.label_map)
    prints["handler"] = sha256_tree(handler_dir)
    prints["serving"] = sha256_json(serving)
    return prints
