"""Crash-test writer: ingests deterministic segments into a memory directory until it is killed.

Usage: python tests/_store_writer.py DIRECTORY
Prints "ready N" once the store is open (N = entries found), then one committed entry id per line.
Every third entry also gets a journaled text update ("text <id> v2"), printed as "text <id>".
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from _memory_helpers import make_segment, meta  # noqa: E402
from memory.store import LongTermStore  # noqa: E402

CRASH_META = dict(layers=2, heads=2, head_dim=64)
TOKENS = 96  # ~200 KB of K/V per entry: kills often land inside a write


def main() -> None:
    m = meta(**CRASH_META)
    store = LongTermStore(m, sys.argv[1], ram_bytes=1 << 20)
    print(f"ready {len(store)}", flush=True)
    while True:
        eid = store.next_id
        assert store.add(make_segment(eid, m, tokens=TOKENS)) == eid
        print(eid, flush=True)
        if eid % 3 == 0:
            store.set_text(eid, f"text {eid} v2")
            print(f"text {eid}", flush=True)


if __name__ == "__main__":
    main()
