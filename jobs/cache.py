"""A remote worker's download cache: files in its own MEDIA_ROOT/cache, bounded in bytes,
least recently used evicted first.

Entries are immutable (a video's source never changes; an output is named by the attempt
folder that made it), so a hit needs no check with the server. Several work-horses of one
host share the cache: a file is added by an atomic rename, and a step works on a hard link
of it in its own folder, so evicting an entry never pulls a file from under a running step.

An entry is durable before it has its name: the file is fsynced before the rename, and the
folder after it, so a power cut leaves the whole file under its name or none (without the
first fsync the rename can reach the disk before the data, and a later run would trust a
truncated file). A caller that knows what an entry must hold (the source's sha256) has a
hit checked against it too: an entry that does not match, written before entries were made
durable or damaged on the disk since, is dropped and counts as a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from pathlib import Path

from webapp.services.storage import sync_dirs, sync_file

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class Cache:
    def __init__(self, root: Path, limit_bytes: int) -> None:
        self.root = Path(root)
        self.limit = limit_bytes

    def path(self, key: str) -> Path:
        if not _KEY_RE.match(key) or key.startswith("."):
            raise ValueError(f"invalid cache key {key!r}")
        return self.root / key

    def get(self, key: str, sha256: str | None = None) -> Path | None:
        """The cached file, marked as just used; None on a miss. With `sha256`, an entry
        whose content does not have that digest is deleted, and is a miss."""
        path = self.path(key)
        try:
            os.utime(path)
            if sha256 is not None and not self._holds(path, sha256):
                return None
        except FileNotFoundError:
            return None
        return path

    def _holds(self, path: Path, sha256: str) -> bool:
        """Whether the entry at `path` has that digest; if not, it is deleted (unless
        another process has already put a new file under its name)."""
        with open(path, "rb") as fh:
            got = hashlib.file_digest(fh, "sha256").hexdigest()
            if got == sha256:
                return True
            log.warning("cache: %s has sha256 %s (%d bytes), expected %s: fetching it again",
                        path.name, got, os.fstat(fh.fileno()).st_size, sha256)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino:
                    path.unlink()
        return False

    def part(self, key: str) -> Path:
        """Where a download of `key` by this process accumulates (kept across resumes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f".{key}.{os.getpid()}.part"

    def add(self, part: Path, key: str) -> Path:
        """Move a complete, verified download into the cache, then evict down to the limit
        (the new entry last)."""
        path = self.path(key)
        sync_file(part)  # the data on disk before the name (module docstring)
        os.replace(part, path)
        sync_dirs(self.root)
        self.evict(keep=path)
        return path

    def entries(self) -> list[tuple[float, int, Path]]:
        """(last use, size, path) of every entry, least recently used first."""
        found = []
        for path in self.root.glob("*") if self.root.is_dir() else ():
            if path.name.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                found.append((stat.st_mtime, stat.st_size, path))
        return sorted(found)

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Delete least recently used entries until the cache holds at most `limit` bytes
        (`keep` is never deleted, even when it alone is larger)."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, path in entries:
            if total <= self.limit:
                break
            if path == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
            removed.append(path)
        if removed:
            log.info("cache: evicted %d file(s), %d bytes kept", len(removed), total)
        return removed
