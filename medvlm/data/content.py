"""Content digests of data files: what a file holds, not what it is called.

Feature caches and dataset lineage key on these, so an image edited in place gets a new digest
(and new features) even with the same name. Each file's bytes are hashed once, streamed, and the
result is remembered by (path, size, mtime, ctime) in a small SQLite table beside the feature
cache: a rerun on unchanged files reads no image bytes.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20


def cache_root() -> Path:
    """Where derived data (features, file digests) is cached: `MEDVLM_CACHE`, else ~/.cache/medvlm/features."""
    return Path(os.environ.get("MEDVLM_CACHE") or Path.home() / ".cache" / "medvlm" / "features")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _open_index() -> sqlite3.Connection | None:
    """The digest table, or None where the cache folder cannot be written (digests are then just computed)."""
    try:
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(root / "file-digests.sqlite", timeout=60)
        db.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                   "ctime_ns INTEGER, sha256 TEXT)")
        return db
    except (OSError, sqlite3.Error):
        return None


def file_digests(paths: Iterable[str | os.PathLike]) -> list[str]:
    """sha256 of each file's bytes, in order; unchanged files come from the index without being read."""
    files = [Path(p).resolve() for p in paths]
    stamps = [_stamp(p) for p in files]
    db = _open_index()
    known: dict[str, tuple] = {}
    if db is not None:
        try:
            wanted = list({str(p) for p in files})
            for i in range(0, len(wanted), 500):
                part = wanted[i:i + 500]
                rows = db.execute(f"SELECT path, size, mtime_ns, ctime_ns, sha256 FROM digests WHERE path IN "
                                  f"({','.join('?' * len(part))})", part)
                known.update({row[0]: row[1:] for row in rows})
        except sqlite3.Error:
            db = None
    digests, fresh = [], []
    for path, stamp in zip(files, stamps):
        hit = known.get(str(path))
        if hit is not None and tuple(hit[:3]) == stamp:
            digests.append(hit[3])
            continue
        digest = _sha256(path)
        known[str(path)] = (*stamp, digest)
        fresh.append((str(path), *stamp, digest))
        digests.append(digest)
    if db is not None:
        try:
            with db:
                db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?)", fresh)
        except sqlite3.Error:
            pass  # a read-only or busy cache only costs a re-hash next time
        db.close()
    return digests


def content_keys(keys: list[str]) -> list[str]:
    """Image keys as content: a file path becomes its bytes' sha256; `sha1:` keys of in-table bytes already are."""
    paths = [k for k in keys if not k.startswith("sha1:")]
    by_path = dict(zip(paths, file_digests(paths)))
    return [k if k.startswith("sha1:") else f"sha256:{by_path[k]}" for k in keys]
