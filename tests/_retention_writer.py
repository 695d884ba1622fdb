"""Crash-test writer for retention: adds entries under a byte cap (deleting the oldest) until killed.

Usage: python tests/_retention_writer.py DIRECTORY MODE CAP
MODE "loop": add an entry, enforce the cap, save the index every 5 entries; prints "added <id>" and
"deleted <ids>" lines. MODE "mid": add 8 entries, save the index, then delete the 4 oldest with a file
removal that stops (prints "mid" and sleeps) after the first file is gone: the parent kills it there.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import memory.store_retention as store_mod  # noqa: E402
from _memory_helpers import make_segment, meta  # noqa: E402
from memory.index import MemoryIndex  # noqa: E402
from memory.retention import enforce  # noqa: E402
from memory.store import LongTermStore  # noqa: E402

TOKENS = 32


def main() -> None:
    directory, mode, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
    m = meta(layers=2, heads=2, head_dim=32)
    store = LongTermStore(m, directory, ram_bytes=1 << 20)
    index = MemoryIndex.load_or_rebuild(store, directory, retriever="internal")
    print(f"ready {len(store)}", flush=True)
    if mode == "mid":
        for _ in range(8):
            eid = store.next_id
            index.add(store.add(make_segment(eid, m, tokens=TOKENS)), make_segment(eid, m, tokens=TOKENS))
        index.save(directory)
        removed = []
        real = store_mod._remove_file

        def stop_after_first(path):
            real(path)
            removed.append(path)
            print("mid", flush=True)
            time.sleep(3600)

        store_mod._remove_file = stop_after_first
        store.delete(store.ids()[:4])
        return
    while True:
        eid = store.next_id
        seg = make_segment(eid, m, tokens=TOKENS)
        store.add(seg)
        index.add(eid, seg)
        print(f"added {eid}", flush=True)
        gone = enforce(store, index, max_disk_bytes=cap)
        if gone:
            print("deleted " + " ".join(map(str, gone)), flush=True)
        if eid % 5 == 0:
            index.save(directory)


if __name__ == "__main__":
    main()
