"""What synthdet keeps on this machine, in one folder: `synthdet cache list` / `clear`.

The cache is `$SYNTHDET_CACHE`, by default `~/.cache/synthdet` (serving.archive.cache_dir).
Everything in it is rebuilt when needed, so clearing it only costs time:

- `archives/<key>/<name>.mar`: model archives, one per checkpoint and serving settings
  (`synthdet serve`, `archive`'s cache, `deploy`);
- `serve-<port>/`: the work folder of a `synthdet serve` (config, logs, TorchServe's temp
  files), removed when it stops cleanly unless `--keep-logs`;
- `demo-untrained.pth`: the untrained checkpoint `--demo-model` serves;
- `wheels/<hash>/`: this project's wheel, built for cloud replicas.

A running server's folder, and the archives it serves, are never removed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bootstrap.bundle import WHEELS_FOLDER
from serving.archive import ARCHIVES_FOLDER, cache_dir
from synthdet.local_serve import in_use

SERVE_PREFIX = "serve-"
DEMO_CHECKPOINT = "demo-untrained.pth"

# Each kind of entry and what it is, in the order `synthdet cache list` shows them.
KINDS: dict[str, str] = {
    "archives": "model archives (.mar), one per checkpoint and serving settings",
    "serve-logs": "`synthdet serve` work folders (logs), kept after an error or with --keep-logs",
    "demo": "the untrained demo checkpoint (--demo-model)",
    "wheels": "this project's wheel, built for cloud replicas",
    "other": "anything else: not synthdet's, listed but never removed",
}
# What `clear` may remove: only what synthdet made. SYNTHDET_CACHE may point at a folder
# that also holds the user's own files (a checkpoint beside the archives).
CLEARABLE = tuple(kind for kind in KINDS if kind != "other")


# Where each kind lies in the cache folder.
WHERE: dict[str, str] = {
    "archives": f"{ARCHIVES_FOLDER}/",
    "serve-logs": f"{SERVE_PREFIX}<port>/",
    "demo": DEMO_CHECKPOINT,
    "wheels": f"{WHEELS_FOLDER}/",
    "other": "",
}


@dataclass(frozen=True)
class Entry:
    kind: str
    path: Path
    size: int
    # A running `synthdet serve` uses it: clearing leaves it alone.
    in_use: bool = False


def serve_folder(port: int) -> Path:
    """The default work folder of `synthdet serve --port PORT`."""
    return cache_dir() / f"{SERVE_PREFIX}{port}"


def demo_checkpoint() -> Path:
    return cache_dir() / DEMO_CHECKPOINT


def size_of(path: Path) -> int:
    """Bytes on disk under `path`, links not followed (a serve folder links to archives)."""
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size if path.exists() or path.is_symlink() else 0
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(folder) / name).lstat().st_size
            except OSError:
                continue  # gone meanwhile
    return total


def entries(root: Path | None = None) -> list[Entry]:
    """Everything in the cache, one entry per archive, serve folder, file or wheel build."""
    root = root or cache_dir()
    if not root.is_dir():
        return []
    found: list[Entry] = []
    serving = [p for p in root.glob(f"{SERVE_PREFIX}*") if p.is_dir() and in_use(p)]
    busy_archives = _archives_served_from(serving)
    for path in sorted(root.iterdir()):
        if path.name == ARCHIVES_FOLDER and path.is_dir():
            found += [
                Entry("archives", key, size_of(key), key.resolve() in busy_archives)
                for key in sorted(path.iterdir())
            ]
        elif path.name == WHEELS_FOLDER and path.is_dir():
            found += [Entry("wheels", build, size_of(build)) for build in sorted(path.iterdir())]
        elif path.name.startswith(SERVE_PREFIX) and path.is_dir():
            found.append(Entry("serve-logs", path, size_of(path), path in serving))
        elif path.name == DEMO_CHECKPOINT:
            found.append(Entry("demo", path, size_of(path)))
        else:
            found.append(Entry("other", path, size_of(path)))
    return found


def _archives_served_from(folders: Iterable[Path]) -> set[Path]:
    """The archive folders running servers link to (their model-store/<name>.mar)."""
    return {link.resolve().parent for folder in folders for link in (folder / "model-store").glob("*.mar")}


def clear(kinds: Iterable[str], root: Path | None = None) -> tuple[list[Entry], list[Entry]]:
    """Remove the entries of these kinds: (removed, kept because a running server uses them)."""
    wanted = set(kinds)
    unknown = wanted - set(CLEARABLE)
    if unknown:
        raise ValueError(f"cannot clear cache kinds {sorted(unknown)}; these can be: {', '.join(CLEARABLE)}")
    removed, kept = [], []
    for entry in entries(root):
        if entry.kind not in wanted:
            continue
        if entry.in_use:
            kept.append(entry)
            continue
        remove_tree(entry.path)
        removed.append(entry)
    return removed, kept


def remove_tree(path: Path) -> None:
    """A file, a link or a folder with all in it; whatever is already gone is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def human_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}" if size < 10 * scale else f"{size / scale:.0f} {unit}"
    return f"{size} B"
