"""Checksum manifests: `manifest.json` lists the size and SHA-256 of every file of a folder written by
`checkpoint.write_atomically` (checkpoints and `final/`), so a flipped byte, a truncated or missing file is found
by name before anything is loaded from the folder.

    {"format": 1, "files": {"model.safetensors": {"size": 123, "sha256": "..."}, ...}}

The manifest is written last, inside the temporary folder, so a folder that has one was complete when renamed
into place; one without it (or with files that no longer match) is never resumed from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "manifest.json"
_FORMAT = 1
_CHUNK = 1 << 22  # bytes read at a time: hashing a multi-GB optimizer state never holds it in memory


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted: files that do not match its manifest (or no manifest), or content
    that is not plain tensors and data. The message names the files."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST)


def write_manifest(folder: Path) -> None:
    """Hash every file under `folder` into `folder/manifest.json`."""
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)} for p in _files(folder)
    }
    (folder / MANIFEST).write_text(json.dumps({"format": _FORMAT, "files": files}, indent=1))


def manifest_problems(folder: Path) -> list[str]:
    """What is wrong with `folder` against its manifest, one entry per file ([] if every listed file matches).
    Sizes are compared first, so a truncated file is reported as such without being hashed."""
    path = folder / MANIFEST
    if not path.is_file():
        return [f"{MANIFEST} is missing (the folder was not completely written)"]
    try:
        listed = json.loads(path.read_text())["files"]
        entries = sorted((str(name), int(e["size"]), str(e["sha256"])) for name, e in listed.items())
    except (ValueError, KeyError, TypeError, AttributeError):
        return [f"{MANIFEST} is unreadable"]
    problems = []
    for name, size_listed, sha_listed in entries:
        file = folder / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif (size := file.stat().st_size) != size_listed:
            problems.append(f"{name} has {size} bytes, the manifest says {size_listed} (truncated or overwritten)")
        elif file_sha256(file) != sha_listed:
            problems.append(f"{name} does not match its SHA-256 in the manifest (corrupted)")
    return problems


def verify_folder(folder: Path) -> None:
    """Raise CheckpointError naming every damaged file of `folder`."""
    problems = manifest_problems(folder)
    if problems:
        raise CheckpointError(
            f"{folder} is damaged: {'; '.join(problems)}. Delete it (or restore it from a copy) and load another "
            "checkpoint"
        )
