"""Mutation check: plant one-line bugs in the core, one at a time, and see which the tests catch.

Usage (from the repository root)::

    python tests/mutations.py                 # every mutant
    python tests/mutations.py --only NAME ... # some of them (names from --list)
    python tests/mutations.py --list          # the list, nothing run
    python tests/mutations.py --suite         # run the whole suite per mutant instead of its tests

Each mutant replaces one line (matched exactly once, whitespace included) in a scratch copy of the
repository, never in place, and runs the tests that cover it (or the whole suite with --suite). It is
*killed* when they fail. A baseline run of the same tests on the unmutated copy must pass first. The
result is a Markdown table on stdout (docs/mutations.md records the last run). Not collected by pytest
(its name does not start with test_), not run in CI.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# test groups (pytest node ids relative to the repo)
EQ = "tests/test_engine_equivalence.py"
TEXT_EQ = "tests/test_text_equivalence.py"
WINDOW = "tests/test_memory_window.py"
COMMENT = "tests/test_commentary.py"
POWER = "tests/test_store_powercut.py"
STORE = "tests/test_store.py"
CAUSAL = "tests/test_causality.py"
RESP = "tests/test_responder.py"
LT = "tests/test_longterm_engine.py"
CLOCK = "tests/test_clock_time.py"
KVB_EQ = "tests/test_kv_buffer.py::test_many_evictions_equal_reference"
KVB_SNAP = "tests/test_kv_buffer.py::test_snapshot_before_evictions_answers_as_before"
KVB_REUSE = "tests/test_kv_buffer.py::test_unheld_snapshot_buffers_are_reused"
SKIP = "tests/test_skip_undecoded.py"
STATIC = "tests/test_static_decode.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    original: str  # the whole line, stripped of its newline (indentation included)
    mutated: str
    breaks: str  # what the bug breaks, in words
    tests: tuple[str, ...]


def M(name, file, original, mutated, breaks, *tests) -> Mutant:
    return Mutant(name, file, original, mutated, breaks, tuple(tests))


MUTANTS: list[Mutant] = [
    # ---- the mutants --------------------------------------------------------------------------
    M("assemble-drops-prev-text", "memory/manager.py",
      "        head = list(snap.sinks) + list(snap.prev_text)",
      "        head = list(snap.sinks)",
      "retrieved context leaves out the previous-text block (head counted as sinks only)", TEXT_EQ),
    M("assemble-head-is-sinks-only", "memory/manager.py",
      "        p_head = sum(s.span for s in head)",
      "        p_head = sum(s.span for s in snap.sinks)",
      "retrieved entries overlap the previous-text positions", TEXT_EQ),
    M("prev-text-head-tail-swapped", "memory/manager.py",
      "        return [s for s in (self.prev_head, self.prev_tail) if s is not None]",
      "        return [s for s in (self.prev_tail, self.prev_head) if s is not None]",
      "previous-text tail placed before its head", TEXT_EQ),
    M("snapshot-when-picked-up", "vstream/session/responder.py",
      "                ans = self._answer_fn(item.question, item.snapshot, max_new_tokens=item.max_new_tokens,",
      "                ans = self._answer_fn(item.question, self._snapshot_fn(), max_new_tokens=item.max_new_tokens,",
      "a question is answered on the memory as of when the worker picks it up, not when it was asked", CAUSAL),
    # ---- every fsync and directory fsync ----------------------------------------------------------------
    M("no-fsync-atomic-write", "memory/journal.py",
      "                fs.fsync(fd)  # the data before the name: a crash never shows the new name with missing bytes",
      "                pass",
      "segment / config / index files renamed into place before their data is durable", POWER),
    M("no-dirsync-atomic-write", "memory/journal.py",
      "        fs.fsync_dir(path.parent)  # the new name itself",
      "        pass",
      "a segment's (or config's, index file's) new name is not durable", POWER),
    M("no-fsync-journal-line", "memory/journal.py",
      "                fs.fsync(fd)  # the line is acknowledged when this returns",
      "                pass",
      "an acknowledged journal line (entry, text update) is lost at a power cut", POWER),
    M("no-dirsync-new-journal", "memory/journal.py",
      "                fs.fsync_dir(self.path.parent)  # a new journal's name",
      "                pass",
      "a new journal's name (and the segments directory) is not durable", POWER),
    M("no-dirsync-makedirs", "memory/fsops.py",
      "            fs.fsync_dir(d.parent)",
      "            pass",
      "a new memory directory (or its index directory) is not durable in its parent", POWER),
    M("real-fsync-noop", "memory/fsops.py",
      "        os.fsync(fd)",
      "        pass",
      "the real file layer's fsync does nothing (the double stands in for it elsewhere)", POWER),
    M("real-dir-fsync-noop", "memory/fsops.py",
      "            os.fsync(fd)",
      "            pass",
      "the real file layer's directory fsync does nothing", POWER),
    # ---- more one-line bugs across the core ------------------------------------------------------------
    M("place-by-tokens-not-span", "memory/manager.py",
      "        pos += seg.span",
      "        pos += seg.n_tokens",
      "segments placed by token count: M-RoPE chunks (span < tokens) leave position gaps", EQ, TEXT_EQ),
    M("slice-no-shift", "memory/manager.py",
      "    shift = int(seg.rel_pos[0, a].item())",
      "    shift = 0",
      "a text slice keeps its old positions: previous-text tail keys rotated wrongly", TEXT_EQ, WINDOW),
    M("prev-tail-keeps-oldest", "memory/manager.py",
      "                tail = slice_text(tail, tail.n_tokens - self.prev_tail_max, tail.n_tokens, self.rotate)",
      "                tail = slice_text(tail, 0, self.prev_tail_max, self.rotate)",
      "the previous-text tail keeps the oldest tokens instead of the newest", TEXT_EQ, WINDOW),
    M("prev-head-unbounded", "memory/manager.py",
      "            room = self.prev_head_max - head_len",
      "            room = self.prev_head_max",
      "the previous-text head grows past its bound", WINDOW, TEXT_EQ, COMMENT),
    M("assemble-head-not-shifted", "memory/manager.py",
      "        keys = tuple(torch.cat([self.rotate(k[:, :, :n_head], -r_span), rk, k[:, :, n_head:]], dim=-2)",
      "        keys = tuple(torch.cat([k[:, :, :n_head], rk, k[:, :, n_head:]], dim=-2)",
      "sinks and previous text keep their positions: retrieved entries overlap them", EQ, TEXT_EQ),
    M("assemble-unsorted", "memory/manager.py",
      "        ordered = sorted(retrieved, key=lambda s: (s.start_s if s.start_s is not None else -1.0))",
      "        ordered = list(retrieved)",
      "retrieved entries placed in score order, not chronologically", EQ, TEXT_EQ),
    M("extract-wrong-direction", "memory/kvbuffer.py",
      "            ck = self.rotate(g.k.narrow(-2, a, n_tokens), -start)  # [L_g, 1, H, s, D]",
      "            ck = self.rotate(g.k.narrow(-2, a, n_tokens), start)  # [L_g, 1, H, s, D]",
      "segments are not made canonical (rotated forward instead of back to 0)", EQ, TEXT_EQ),
    # ---- the active window's buffers (memory/kvbuffer.py) ----------------------------------------------------
    M("buffer-append-at-start", "memory/kvbuffer.py",
      "        st.k_rows[idx].narrow(-2, n, s).copy_(k)",
      "        st.k_rows[idx].narrow(-2, 0, s).copy_(k)",
      "a prefill's keys overwrite the start of the buffer instead of following its tokens", EQ, KVB_EQ),
    M("extract-values-not-copied", "memory/kvbuffer.py",
      "            cv = g.v.narrow(-2, a, n_tokens).clone()",
      "            cv = g.v.narrow(-2, a, n_tokens)",
      "a segment's values are views of a buffer that is reused later (evicted entries change)", KVB_EQ),
    M("extract-at-zero-not-copied", "memory/kvbuffer.py",
      "                ck = ck.clone()  # the rotation by 0 returned the view itself",
      "                pass",
      "a segment extracted at position 0 holds views of a buffer that is reused later",
      "tests/test_kv_buffer.py::test_extracted_segments_never_change"),
    M("relayout-delta-off-by-one", "memory/kvbuffer.py",
      "            deltas.extend([pos] * n)",
      "            deltas.extend([pos + 1] * n)",
      "after an eviction the window is re-rotated one position late", EQ, KVB_EQ),
    M("relayout-prefix-not-copied", "memory/kvbuffer.py",
      "            if a:",
      "            if False:",
      "the unchanged prefix (sinks, previous text) is not carried into the new buffer", EQ, KVB_EQ),
    M("relayout-run-from-new-offset", "memory/kvbuffer.py",
      "                    gd.c.narrow(-2, nw, m).copy_(gs.c.narrow(-2, old, m))",
      "                    gd.c.narrow(-2, nw, m).copy_(gs.c.narrow(-2, nw, m))",
      "surviving segments' canonical keys are read from where they will go, not where they are", EQ, KVB_EQ),
    M("relayout-values-not-moved", "memory/kvbuffer.py",
      "                    gd.v.narrow(-2, nw, m).copy_(gs.v.narrow(-2, old, m))",
      "                    pass",
      "surviving segments' values are not moved with their keys", EQ, KVB_EQ),
    M("relayout-not-rerotated", "memory/kvbuffer.py",
      "                gd.k.narrow(-2, a, new_len - a).copy_(self.rotate(gd.c.narrow(-2, a, new_len - a), d))",
      "                gd.k.narrow(-2, a, new_len - a).copy_(gd.c.narrow(-2, a, new_len - a))",
      "after an eviction the window's keys stay canonical (not rotated to their positions)", EQ, KVB_EQ),
    M("buffer-reused-while-pinned", "memory/kvbuffer.py",
      "        return st is not self.storage and st is not self.published and len(st.pins) == 0",
      "        return st is not self.storage and st is not self.published",
      "a buffer a held snapshot views is overwritten by a later eviction", KVB_SNAP),
    M("snapshot-not-pinned", "memory/manager.py",
      "            self.kv.pin(snap, snap.storage)",
      "            pass",
      "snapshots handed out do not keep their buffer from being reused", KVB_SNAP),
    M("grow-loses-tokens", "memory/kvbuffer.py",
      "                getattr(gd, t).narrow(-2, 0, top).copy_(getattr(gs, t).narrow(-2, 0, top))",
      "                pass",
      "a grown buffer starts empty: the context before the growth is lost", KVB_EQ),
    M("placed-without-rotation", "memory/manager.py",
      "                self.cache.update(self.rotate(k, self.next_pos), v, l)",
      "                self.cache.update(k, v, l)",
      "a segment committed without a prefill keeps canonical keys at its position",
      "tests/test_kv_buffer.py::test_commit_without_prefill_places_canonical_keys"),
    M("chunks-not-counted", "memory/manager.py",
      "            self.chunks_ingested += 1",
      "            self.chunks_ingested += 0",
      "the snapshot does not count ingested chunks (waits, stats, alerts)", COMMENT, CAUSAL),
    M("window-keeps-one-more", "memory/window.py",
      "        out.extend(vision[: max(0, len(vision) - self.window_chunks)])",
      "        out.extend(vision[: max(0, len(vision) - self.window_chunks - 1)])",
      "the window keeps W+1 chunks", WINDOW, EQ),
    M("text-window-drops-one-more", "memory/window.py",
      "            keep_from = i",
      "            keep_from = i + 1",
      "the text window evicts one turn too many", WINDOW, TEXT_EQ),
    M("span-off-by-one", "memory/segment.py",
      "        return int(self.rel_pos.max().item()) + 1 if self.rel_pos.numel() else 0",
      "        return int(self.rel_pos.max().item()) if self.rel_pos.numel() else 0",
      "a segment's span is one position short: the next segment overlaps its last token", WINDOW, EQ),
    M("segment-copy-loses-start", "memory/segment.py",
      "                       start_s=self.start_s, end_s=self.end_s, text=self.text, token_ids=self.token_ids,",
      "                       start_s=self.end_s, end_s=self.end_s, text=self.text, token_ids=self.token_ids,",
      "stored entries (copied to CPU) carry the wrong start time", LT, CAUSAL),
    M("store-reuses-last-id", "memory/store.py",
      "        self._next_id = max_id + 1",
      "        self._next_id = max_id",
      "a reopened store gives the next entry the last entry's id (overwrites it)", STORE, POWER),
    M("store-drops-text-updates", "memory/store.py",
      '                    e.info = dataclasses.replace(e.info, text=str(body.get("text", "")))',
      "                    pass",
      "journaled text updates are lost on reopen", STORE, POWER),
    M("store-skips-checksum", "memory/store_io.py",
      "        if h.hexdigest() != e.sha256:",
      "        if False:",
      "a damaged segment file is not skipped at open", STORE),
    M("ram-tier-evicts-once", "memory/store_tiers.py",
      "        while self._lru and self.used + size > self.limit:",
      "        if self._lru and self.used + size > self.limit:",
      "the RAM tier evicts one entry per insert and grows past its byte bound", STORE),
    M("text-entry-keeps-format-1", "memory/store_format.py",
      "    return max(format_version_for(quantize), TEXT_FORMAT_VERSION if kind != VISION else 1)",
      "    return format_version_for(quantize)",
      "a store holding a text entry stays marked format 1: an older reader takes it for a video chunk",
      "tests/test_speech_memory.py"),
    M("push-queue-ignores-capacity", "vstream/sources/push_queue.py",
      "            return not self._ended and self._queued + cost <= self.capacity",
      "            return not self._ended",
      "pushed frames and audio are queued past the bound (a slow consumer grows memory without limit)",
      "tests/test_sources.py", "tests/test_audio.py"),
    M("qwen25-reference-no-time-spacing", "vstream/models/qwen2_5_vl.py",
      '        return {"second_per_grid_ts": torch.tensor([self.second_per_grid()] * n_videos, device=self.device)}',
      "        return {}",
      "Qwen2.5-VL's reference forward ignores the sampling rate (temporal positions as at HF's default)",
      "tests/test_model_qwen2_5_vl.py", EQ),
    M("journal-ignores-crc", "memory/journal.py",
      "    return d if crc == _line_crc(d) else None",
      "    return d",
      "a journal line failing its crc is replayed", STORE),
    M("journal-size-not-advanced", "memory/journal.py",
      "        self.size += len(line)",
      "        pass",
      "each append overwrites the previous line", STORE, POWER),
    M("retrieval-not-before-window", "vstream/engine/core.py",
      "                first_live = live_vision[0].start_s if live_vision else snap.stream_time_s",
      "                first_live = snap.stream_time_s",
      "retrieval may bring back entries that overlap the snapshot's window", LT),
    M("add-text-position-gap", "vstream/engine/core.py",
      "        prefill(a, mm.cache, tokens, start, logits=logits)",
      "        prefill(a, mm.cache, tokens, start + 1, logits=logits)",
      "add_text runs one position after where its segment is recorded", TEXT_EQ),
    M("replayed-words-gap", "vstream/engine/core.py",
      '                prefill(a, mm.cache, a.embed_ids(word_ids), pos, logits="none")',
      '                prefill(a, mm.cache, a.embed_ids(word_ids), pos + 1, logits="none")',
      "replayed commentary words run one position late", TEXT_EQ, COMMENT),
    M("history-flag-ignored", "vstream/session/responder.py",
      "                if item.history and not ans.cancelled and not unanswered(ans) and self._on_history is not None:",
      "                if not ans.cancelled and not unanswered(ans) and self._on_history is not None:",
      "a question asked with history=False still enters the text window", RESP),
    M("decode-position-skips", "vstream/engine/generate.py",
      "        pos += 1",
      "        pos += 2",
      "decoded tokens run two positions apart", TEXT_EQ),
    M("decode-last-token-not-fed", "vstream/engine/generate.py",
      "        if i == n - 1 and not feed_last:",
      "        if i == n - 1:",
      "the last word of a commentary turn is never fed into the cache", TEXT_EQ, COMMENT),
    # ---- clock time (issue 24) ----------------------------------------------------------------------------
    M("clock-entry-keeps-old-format", "memory/store_format.py",
      "    if clocked:",
      "    if False:",
      "a store holding wall-clock times stays at format 1-3: an older reader drops the times silently", CLOCK),
    M("range-half-closed", "memory/longterm.py",
      "    return (lo <= a < hi) if b <= a else (a < hi and b > lo)",
      "    return (lo <= a < hi) if b <= a else (a <= hi and b >= lo)",
      "an entry that only touches a range's end (ends at since, starts at until) is taken as inside it", CLOCK),
    M("window-not-range-limited", "vstream/engine/core.py",
      "                                                   lambda s: wall_overlaps(s, wall_range))",
      "                                                   lambda s: True)",
      "a time-range question still sees the whole live window", CLOCK),
    M("empty-range-calls-model", "vstream/engine/core.py",
      "        if wall_range is not None and recorded_in(snap.live, self.long_term, wall_range) == 0:",
      "        if False:",
      "an empty time range runs the model instead of answering 'nothing recorded'", CLOCK),
    M("empty-range-kept-in-history", "vstream/session/responder.py",
      "                if item.history and not ans.cancelled and not unanswered(ans) and self._on_history is not None:",
      "                if item.history and not ans.cancelled and self._on_history is not None:",
      "a 'nothing recorded' answer enters the conversation (a forward pass, an empty exchange in later context)",
      CLOCK),
    M("chunk-wall-not-moved-to-start", "vstream/sources/chunking.py",
      "        wall = None if wall0 is None else wall0 - (ts[0] - start)  # the first frame's wall time, at the chunk start",
      "        wall = wall0",
      "a chunk's clock time is its first frame's, not its start's", CLOCK),
    M("text-wall-from-wrong-ref", "vstream/engine/evidence.py",
      "    return {\"wall_s\": w0 + (start_s - t0), \"wall_end_s\": w0 + (end - t0), \"tz\": tz}",
      "    return {\"wall_s\": w0, \"wall_end_s\": w0 + (end - start_s), \"tz\": tz}",
      "text and vision entries get the wall time of the last chunk's start instead of their own", CLOCK),
    # ---- issue 21: convert only kept frames, Pillow resize -----------------------------------------------
    M("decord-fetches-every-frame", "vstream/sources/file.py",
      "            wanted = order[Sampler(self._plan_fps).plan(ts[order])]",
      "            wanted = order",
      "decord converts frames the sampler drops", "tests/test_convert_kept.py"),
    M("pyav-converts-eagerly", "vstream/sources/pyav.py",
      "            yield counter.lazy_frame(t, functools.partial(rgb_of, frame, max_side))",
      "            yield Frame(t, rgb_of(frame, max_side))",
      "PyAV converts every decoded frame, uncounted", "tests/test_convert_kept.py"),
    M("pillow-reducing-gap", "vstream/models/resize.py",
      "            img = img.resize((w, h), resample=flt, reducing_gap=None)",
      "            img = img.resize((w, h), resample=flt, reducing_gap=2.0)",
      "the Pillow path reduces first: pixels differ from HF's processors", "tests/test_parity_processor.py"),
    M("smolvlm-single-resize", "vstream/models/smolvlm.py",
      "        x = resize_frames(frames, [first, (side, side)], self.resample, self.device)  # [N, 3, side, side] 0..1",
      "        x = resize_frames(frames, [(side, side)], self.resample, self.device)  # [N, 3, side, side] 0..1",
      "SmolVLM's first (longest-edge) resize is skipped", "tests/test_parity_processor.py"),
    # ---- issue 21: dropped non-reference pictures are not decoded (vstream/sources/skipping.py) ----------
    M("nal-ref-idc-high-bit-only", "vstream/sources/skipping.py",
      "            if (header >> 5) & 0x03:",
      "            if (header >> 6) & 0x01:",
      "slices with nal_ref_idc 1 count as non-reference: pictures others refer to are left out", SKIP),
    M("avcc-length-size-fixed", "vstream/sources/skipping.py",
      "        return (extradata[4] & 0x03) + 1",
      "        return 4",
      "a 1- or 2-byte NAL length prefix is read as 4 bytes", SKIP),
    M("kept-nonref-left-out", "vstream/sources/skipping.py",
      "        if self.keeps(self._time(packet.pts)) is not False:",
      "        if False:",
      "non-reference pictures the sampler keeps are left out too (then decoded alone, slowly)", SKIP),
    M("plan-ignores-start", "vstream/sources/skipping.py",
      "                if t >= self.start_s - 1e-6 and (self.end_s is None or t < self.end_s):",
      "                if self.end_s is None or t < self.end_s:",
      "the plan's sampler starts its slots before start_s: it keeps other frames than the real one", SKIP),
    M("plan-times-not-final", "vstream/sources/skipping.py",
      "                    while heap and heap[0] < self._last_read:",
      "                    while heap:",
      "the planner hands times to the sampler in decode order, before later packets could come before them", SKIP),
    M("plan-forgets-too-soon", "vstream/sources/skipping.py",
      "            while self._kept and self._kept[0] < t - HORIZON_S:",
      "            while self._kept and self._kept[0] < t:",
      "kept times are forgotten as soon as a later picture is asked about (B-frames come after it)", SKIP),
    M("left-out-yielded-early", "vstream/sources/pyav.py",
      "        while pending and (t_next is None or pending[0][0] < t_next):",
      "        while pending:",
      "left-out pictures come out before earlier decoded ones (not in presentation order)", SKIP),
    M("left-out-not-yielded", "vstream/sources/pyav.py",
      "            yield Frame.lazy(t, fetch) if counter is None else counter.lazy_frame(t, fetch)",
      "            continue",
      "left-out pictures vanish: the sampler sees fewer frames than the file has", SKIP),
    M("left-out-fetch-wrong-pts", "vstream/sources/pyav.py",
      "            heapq.heappush(pending, (pts_time(pts, vs.time_base) - origin, pts))",
      "            heapq.heappush(pending, (pts_time(pts, vs.time_base) - origin, pts + 1))",
      "a left-out picture read after all is looked for at the wrong timestamp", SKIP),
    M("hevc-trail-r-as-nonref", "vstream/sources/skipping.py",
      "            if kind not in _HEVC_NONREF:",
      "            if kind not in _HEVC_NONREF and kind != 1:",
      "HEVC TRAIL_R pictures (referenced) count as non-reference", SKIP),
    M("hevc-sublayers-ignored", "vstream/sources/skipping.py",
      "    if (extradata[21] >> 3) & 0x07 != 1:  # numTemporalLayers",
      "    if False:  # numTemporalLayers",
      "HEVC *_N pictures are left out even when a higher temporal sub-layer may refer to them", SKIP),
    # ---- issue 21 item 5: static-cache decoding (vstream/engine/static_decode.py) ------------------------
    M("static-mask-hides-self", "vstream/engine/static_decode.py",
      "        mask = torch.where(self.ar <= kv.slot, 0.0, low).to(h.dtype).view(1, 1, 1, -1)  # [1, 1, 1, C] additive",
      "        mask = torch.where(self.ar < kv.slot, 0.0, low).to(h.dtype).view(1, 1, 1, -1)  # [1, 1, 1, C] additive",
      "a decoded token does not attend to itself", STATIC),
    M("static-position-off-by-one", "vstream/engine/static_decode.py",
      "        self.pos.fill_(pos)",
      "        self.pos.fill_(pos + 1)",
      "decoded tokens are rotated one position too far", STATIC),
    M("static-slot-at-zero", "vstream/engine/static_decode.py",
      "        self.kv.slot.fill_(n)",
      "        self.kv.slot.fill_(0)",
      "decoded tokens overwrite the start of the context", STATIC),
    M("static-no-room", "vstream/engine/static_decode.py",
      "        need = n + max_tokens",
      "        need = n",
      "the buffers are sized for the context only, not for the tokens to come", STATIC),
    M("static-finish-drops-last", "vstream/engine/static_decode.py",
      "        end = self.n",
      "        end = self.n - 1",
      "the last token fed is not appended to the caller's cache", STATIC, TEXT_EQ),
    M("static-stale-buffers-reused", "vstream/engine/static_decode.py",
      "        if self.kv is None or need > self.capacity or any(",
      "        if self.kv is None or any(",
      "a context longer than the buffers is written past their end", STATIC),
    M("config-checked-after-load", "vstream/api.py",
      "        cfg = (cfg.replace(**changes) if changes else cfg).validate()  # bad settings fail before the model loads",
      "        cfg = cfg.replace(**changes) if changes else cfg",
      "a bad setting is found only after the model has loaded", "tests/test_cliargs.py"),
]

SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", "runs", "bench_out", ".whl", ".gl"}


def scratch_copy(dest: Path, src: Path = REPO) -> Path:
    """Copy the working tree (no .git, no venv, no caches) to ``dest``."""
    def ignore(d, names):
        return [n for n in names if n in SKIP_DIRS or n.endswith(".pyc") or n.endswith(".vmem")]

    shutil.copytree(src, dest, ignore=ignore, symlinks=True)
    return dest


def apply(root: Path, m: Mutant) -> None:
    path = root / m.file
    lines = path.read_text().split("\n")
    hits = [i for i, l in enumerate(lines) if l == m.original]
    if len(hits) != 1:
        raise SystemExit(f"mutant {m.name}: the line occurs {len(hits)} times in {m.file} (want 1): {m.original!r}")
    lines[hits[0]] = m.mutated
    path.write_text("\n".join(lines))


def run_tests(root: Path, tests: list[str], timeout: int) -> tuple[int, float, str]:
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    t0 = time.perf_counter()
    try:
        p = subprocess.run([PY, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], cwd=root, env=env,
                           capture_output=True, text=True, timeout=timeout)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired:
        rc, out = 124, "timeout"
    lines = [l for l in out.splitlines() if l.startswith(("FAILED", "ERROR"))]
    return rc, time.perf_counter() - t0, (lines[0][:110] if lines else out.strip().splitlines()[-1][:110])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--suite", action="store_true", help="run the whole suite for each mutant")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per test run")
    args = ap.parse_args(argv)
    chosen = MUTANTS
    if args.only:
        names = {m.name for m in MUTANTS}
        unknown = [n for n in args.only if n not in names]
        if unknown:
            ap.error(f"unknown mutant(s) {', '.join(unknown)}; see --list")
        chosen = [m for m in MUTANTS if m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:32s} {m.file:24s} {m.breaks}")
        return 0
    with tempfile.TemporaryDirectory(prefix="vstream-mut-") as tmp:
        base = scratch_copy(Path(tmp) / "base")
        for m in chosen:  # every mutant's line must be there before anything runs
            apply(scratch_copy(Path(tmp) / "probe", base), m)
            shutil.rmtree(Path(tmp) / "probe")
        groups = sorted({t for m in chosen for t in m.tests}) if not args.suite else ["tests"]
        rc, secs, last = run_tests(base, groups, args.timeout)
        print(f"baseline ({' '.join(groups)}): rc={rc} in {secs:.0f}s: {last}", file=sys.stderr)
        if rc != 0:
            print("the unmutated copy fails its tests; fix that first", file=sys.stderr)
            return 2
        rows, survived = [], 0
        for m in chosen:
            root = scratch_copy(Path(tmp) / m.name, base)  # from the one copy: later edits do not leak in
            apply(root, m)
            rc, secs, last = run_tests(root, ["tests"] if args.suite else list(m.tests), args.timeout)
            killed = rc != 0
            survived += not killed
            rows.append(f"| {m.name} | `{m.file}` | {m.breaks} | {'killed' if killed else '**survived**'} | "
                        f"{secs:.0f}s | {last.replace('|', '/')} |")
            print(rows[-1], file=sys.stderr, flush=True)
            shutil.rmtree(root)
    print("| mutant | file | what it breaks | result | time | first failure |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{len(chosen) - survived} of {len(chosen)} killed")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
