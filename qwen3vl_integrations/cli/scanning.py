"""Folder scanning: every image, video and text file under a folder, with its modality."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..core.paths import path_identity
from ..sample_data import IMAGE_EXTENSIONS, TEXT_EXTENSIONS, VIDEO_EXTENSIONS


@dataclass
class ScanResult:
    files: list[tuple[Path, str]] = field(default_factory=list)  # (path, modality), sorted by path
    ignored: list[Path] = field(default_factory=list)  # files with an extension we do not index
    linked_folders: list[Path] = field(default_factory=list)  # symlinked folders, not followed


def _modality(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in TEXT_EXTENSIONS:
        return "text"
    return None


def scan_folder(folder: str | Path, exclude: Sequence[str | Path] = ()) -> ScanResult:
    """Every image, video and text file under ``folder`` (recursively; hidden files and folders skipped).

    Symlinked folders are listed, not followed: a link can loop back or reach far outside the folder.
    """
    folder = Path(folder)
    excluded = {path_identity(Path(p)) for p in exclude} - {None}
    result = ScanResult()
    for root, dirs, names in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and path_identity(root_path / d) not in excluded)
        result.linked_folders.extend(root_path / d for d in dirs if (root_path / d).is_symlink())
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = root_path / name
            kind = _modality(path)
            if kind is None:
                result.ignored.append(path)
            else:
                result.files.append((path, kind))
    result.files.sort(key=lambda t: str(t[0]))
    return result
