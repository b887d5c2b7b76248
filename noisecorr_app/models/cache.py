"""A size bound on the Hugging Face cache, for servers where visitors can pick any Hub model.

Without a bound, a public app downloads every repo id it is given and keeps them all. After each
Hub load we mark the model's files as used (their access time: many disks are mounted
``noatime``, so reading alone does not update it) and then delete whole repos, least recently
used first, until the cache fits. The repo just loaded is never deleted. The scan and the deletion
are huggingface_hub's own cache manager, so the cache stays in the layout every HF tool expects.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path


def mark_used(snapshot: str | Path) -> None:
    """Set the access time of every blob behind a snapshot folder to now (mtime kept)."""
    now = time.time()
    for path in Path(snapshot).rglob("*"):
        try:
            blob = path.resolve()
            if blob.is_file():
                os.utime(blob, (now, blob.stat().st_mtime))
        except OSError:          # a file removed meanwhile by another process: nothing to mark
            pass


def trim_hub_cache(max_bytes: int, cache_dir: str | Path | None = None, keep: tuple[str, ...] = ()) -> list[str]:
    """Delete least recently used model repos until the cache holds at most max_bytes.
    Returns the repo ids deleted. Repos named in ``keep`` stay even if the bound is exceeded."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []
    excess = info.size_on_disk - max_bytes
    if excess <= 0:
        return []
    victims, hashes = [], []
    for repo in sorted(info.repos, key=lambda r: r.last_accessed):
        if excess <= 0:
            break
        if repo.repo_id in keep:
            continue
        victims.append(repo.repo_id)
        hashes += [rev.commit_hash for rev in repo.revisions]
        excess -= repo.size_on_disk
    if hashes:
        info.delete_revisions(*hashes).execute()
    return victims


def cache_bound_from_env() -> int | None:
    """``NOISECORR_HUB_CACHE_GB`` (a number of GB) or None for no bound."""
    raw = os.environ.get("NOISECORR_HUB_CACHE_GB", "").strip()
    if not raw:
        return None
    try:
        gb = float(raw)
    except ValueError:
        raise ValueError(f"NOISECORR_HUB_CACHE_GB must be a number of GB, got '{raw}'") from None
    if not gb > 0:
        raise ValueError(f"NOISECORR_HUB_CACHE_GB must be positive, got '{raw}'")
    return int(gb * 1e9)


def file_sha1(path: str | Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
