"""Retention of long-term memory: a byte cap and a maximum age per store, oldest entries first.

``enforce`` deletes through ``LongTermStore.delete`` (journal record first, then the files) and makes
the index forget the deleted entries; the journal is compacted once it holds more dead lines than live
entries, so that it does not grow without bound under a byte cap. The cap counts what the store
reports (segment files + journal); the index files are rebuildable and extra.
"""
from __future__ import annotations

import logging
import math

logger = logging.getLogger(__name__)


def enforce(store, index=None, *, max_disk_bytes: int = 0, max_age_s: float = 0.0, now_s: float | None = None,
            batch: int = 8) -> list[int]:
    """Delete the entries that break the retention limits; returns their ids (oldest first).

    max_disk_bytes: keep ``store.disk_bytes_used()`` at or under this (0: no cap). max_age_s: delete entries
    that ended before ``now_s - max_age_s`` of stream time (0: no age limit). ``batch``: entries deleted per
    journal record while over the byte cap.
    """
    if max_disk_bytes < 0 or max_age_s < 0:
        raise ValueError("max_disk_bytes and max_age_s must be >= 0 (0 disables the limit)")
    deleted: list[int] = []
    if max_age_s and now_s is not None:
        cutoff = float(now_s) - float(max_age_s)
        old = [i.entry_id for i in store.infos() if not math.isnan(i.end_s) and i.end_s < cutoff]
        deleted += _delete(store, index, old)
    if max_disk_bytes:
        while store.disk_bytes_used() > max_disk_bytes and len(store):
            if getattr(store, "dead_lines", 0) > max(16, len(store)):
                store.compact()
                continue
            ids = store.ids()
            deleted += _delete(store, index, ids[:max(1, min(batch, len(ids) // 4 or 1))])
    if getattr(store, "dead_lines", 0) > max(16, len(store)):
        store.compact()
    if deleted:
        logger.debug("retention deleted %d entries of %s", len(deleted), store.directory)
    return deleted


def _delete(store, index, ids: list[int]) -> list[int]:
    if not ids:
        return []
    gone = store.delete(ids)
    if index is not None and gone:
        index.remove(gone)
    return gone
