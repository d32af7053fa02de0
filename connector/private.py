"""Files and folders that hold patient data (the ledger, exported CDAs and requests) are created readable by
their owner only, whatever the umask: outside systemd (UMask=0077) a shell or cron gives 022, which made the state
dir 0755, the ledger 0644 and exports world-readable. Existing folders are left as the operator made them."""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE, FILE_MODE = 0o700, 0o600


def make_dirs(path: Path) -> None:
    """`mkdir -p path`, every folder it creates 0700."""
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:  # created meanwhile (another instance): theirs
            continue
        os.chmod(folder, DIR_MODE)  # a umask such as 0o277 would have taken the owner's bits too


def write_file(path: Path, data: bytes) -> None:
    """Write (or overwrite) a file 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
    finally:
        os.close(fd)


def restrict(*paths: Path) -> None:
    """Make files the connector just created 0600 (a SQLite database: its -wal and -shm then follow its mode)."""
    for path in paths:
        try:
            os.chmod(path, FILE_MODE)
        except FileNotFoundError:
            pass
