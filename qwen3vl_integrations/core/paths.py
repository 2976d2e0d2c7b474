"""What names one file or folder, whatever the spelling of its path."""
from __future__ import annotations

import os
from pathlib import Path


def path_identity(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file or folder, links followed; None if it does not exist, or where the file
    system has no inode numbers (some network and FAT drives give 0 for every file: all would be one). On
    case-insensitive disks (macOS, Windows) `resolve()` keeps the case it is given, so `Photos` and `photos` are two
    paths of one folder: their identity is the same."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):  # missing, unreadable, or a name the system refuses (a NUL byte)
        return None
    return (status.st_dev, status.st_ino) if status.st_ino else None
