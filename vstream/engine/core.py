"""Perception and answering on one model: chunk -> tokens -> prefill -> memory.commit; question -> answer.

The engine is the single writer of the memory manager: ``start``, ``ingest``, ``commentary`` and
``add_text`` run on one thread at a time (the perception thread, under ``write_lock``). ``answer`` and
``probe`` only read a ``Snapshot`` and may run on another thread at the same time. Other threads hand
text for the window (questions and answers, captions) to the inbox (``post_text``, ``remember``); it is
applied before the next chunk or snapshot, or at once while no perception thread runs.
"""
from __future__ import annotations

import collections
import functools
import logging
import math
import queue
import threading
import time
from typing import Callable, Sequence

import cv2
import numpy as np
import torch

from memory.longterm import wall_overlaps
from memory.manager import MemoryManager, Snapshot, fill_cache
from memory.segment import SINK, TEXT, VISION, Segment
from memory.types import Retrieved
from vstream.clock import NOTHING_RECORDED
from vstream.config import AgentConfig
from vstream.engine.generate import TextStreamer, decode_n_tokens, prefill
from vstream.engine.longterm import LongTermMemory
from vstream.engine.static_decode import static_decoders
from vstream.models.base import ModelAdapter, StopForward
from vstream.sources.frames import resize_max_side
from vstream.engine.evidence import long_term_evidence, recorded_in, speech_evidence, wall_at, window_evidence
from vstream.engine.tokendrop import drop_chunk_tokens, token_drop_for
from vstream.types import Answer, ChunkReport, CommentaryItem

logger = logging.getLogger(__name__)


def make_thumbnail(rgb: np.ndarray, long_side: int) -> bytes:
    """Small JPEG of a frame [H, W, 3] uint8 RGB."""
    rgb = resize_max_side(rgb, long_side)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 75])
    if not ok:
        raise RuntimeError("JPEG encoding of a thumbnail failed")
    return buf.tobytes()


def _on_stream(role: str):
    """Run an Engine method in inference mode on its CUDA stream for ``role`` (plain call on CPU).

    Perception ("perception") and answering ("answer") use separate CUDA streams so that an answer
    never queues behind chunk prefills. Answers first wait for the perception work already queued,
    so the snapshot's tensors are complete; both roles synchronise their stream before returning.
    """
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            stream = self._streams.get(role)
            with torch.inference_mode():
                if stream is None:
                    return fn(self, *args, **kwargs)
                if role == "answer":
                    stream.wait_stream(self._streams["perception"])
                with torch.cuda.stream(stream):
                    out = fn(self, *args, **kwargs)
                stream.synchronize()  # latencies are real time; published tensors are finished
                return out
        return wrapper
    return deco


def _writes(fn):
    """Run an Engine method that writes memory under its ``write_lock`` (re-entrant)."""
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        with self.write_lock:
            return fn(self, *args, **kwargs)
    return wrapper


class Engine:
    """Owns the model adapter and the memory manager for one stream."""

    def __init__(self, adapter: ModelAdapter, config: AgentConfig, long_term: LongTermMemory | None = None,
                 ocr: Callable[[np.ndarray], str] | None = None) -> None:
        self.adapter = adapter
        self.config = config
        self.long_term = long_term
        self.ocr = ocr
        mc = config.memory
        self.memory = MemoryManager(rotate=adapter.rotate_keys, new_cache=adapter.new_cache,
                                    window_chunks=mc.window_chunks, text_window_tokens=mc.text_window_tokens,
                                    prev_text_head=mc.prev_text_head, prev_text_tail=mc.prev_text_tail,
                                    on_evict=long_term.on_evict if long_term is not None else None)
        adapter._install_projection_hooks()  # before any second thread touches the model
        self.token_drop = token_drop_for(adapter, mc.token_drop, mc.token_drop_floor)
        self.visual_tokens_kept = 0  # visual tokens prefilled over the stream
        self.visual_tokens_dropped = 0  # ... and skipped by token drop
        self.last_keep: torch.Tensor | None = None  # [S] bool: the last chunk's token-drop decision
        dev = adapter.device
        self._streams: dict[str, torch.cuda.Stream] = (
            {"perception": torch.cuda.Stream(device=dev), "answer": torch.cuda.Stream(device=dev)}
            if dev.type == "cuda" else {})
        self.started = False
        self.write_lock = threading.RLock()  # held while memory is written; readers of the live window take it
        self._inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()  # (text, stream time, end time, source)
        self._perceiving = False  # True while a perception thread applies the inbox
        self._speech: collections.deque[tuple[float, float, str]] = collections.deque(maxlen=32)  # recent speech
        self._gen_lock = threading.Lock()  # answers: one decode at a time on self._generator
        self._generator = torch.Generator()
        self._clock_ref: tuple[float, float, str] | None = None  # (stream s, wall s, tz) of the last chunk's start
        self._commentary_lock = threading.Lock()  # commentary never waits for an answer
        self._commentary_generator = torch.Generator()
        self._static = static_decoders(adapter, config.generation.decode)  # per decoding thread; {} when dynamic
        if config.generation.seed is not None:
            self._generator.manual_seed(config.generation.seed)
            self._commentary_generator.manual_seed(config.generation.seed + 1)

    # ---- writer side (perception thread) ---------------------------------------------------------
    @_writes
    @_on_stream("perception")
    def start(self, previous_text: str = "") -> None:
        """Prefill the sinks (system prompt) and the caller's previous text."""
        if self.started:
            raise RuntimeError("engine already started")
        a, mm = self.adapter, self.memory
        tokens = a.embed_text(a.system_text(self.config.system_prompt))
        prefill(a, mm.cache, tokens, mm.next_pos, logits="none")
        mm.commit_sink(mm.extract(tokens.n_tokens, 0, tokens.rel_pos, SINK, text=self.config.system_prompt,
                                  token_ids=tuple(tokens.input_ids[0].tolist())))
        if previous_text:
            seg = self._prefill_text(previous_text, None)
            mm.add_previous_text(seg)
        self.started = True

    def _prefill_text(self, text: str, at_s: float | None, logits: str = "none", end_s: float | None = None
                      ) -> Segment:
        a, mm = self.adapter, self.memory
        tokens = a.embed_text(text)
        if tokens.n_tokens == 0:
            raise ValueError("empty text cannot be added to memory")
        start = mm.next_pos
        prefill(a, mm.cache, tokens, start, logits=logits)
        end = at_s if end_s is None else end_s
        return mm.extract(tokens.n_tokens, start, tokens.rel_pos, TEXT, start_s=at_s, end_s=end, text=text,
                          token_ids=tuple(tokens.input_ids[0].tolist()), **self.wall_of(at_s, end))

    def wall_of(self, start_s: float | None, end_s: float | None) -> dict:
        """``wall_s``/``wall_end_s``/``tz`` of stream times, from the last chunk's clock ({} without one)."""
        return wall_at(self._clock_ref, start_s, end_s)

    @_writes
    @_on_stream("perception")
    def add_text(self, text: str, at_s: float | None = None, *, end_s: float | None = None,
                 source: str = "") -> Segment:
        """Put text (an earlier question and answer, a caption) into the live text window.

        ``source="speech"``: recognised speech of ``[at_s, end_s]``; it is kept in long-term memory when it
        leaves the window, and the vision entries of the same seconds carry it in their text (as OCR).
        """
        self._require_started()
        seg = self._prefill_text(text, at_s if at_s is not None else self.memory.stream_time_s, end_s=end_s)
        if source:
            seg.source = source
            self._attach_to_vision(seg)
        self.memory.commit(seg)
        return seg

    def _attach_to_vision(self, seg: Segment) -> None:
        """The transcript joins the text of the vision entries it overlaps (live, or already stored)."""
        a, b = seg.start_s, seg.end_s if seg.end_s is not None else seg.start_s
        self._speech.append((a, b, seg.text))
        for vis in self.memory.live:
            if vis.kind == VISION and vis.start_s < b and vis.end_s > a:
                vis.text = f"{vis.text} {seg.text}"
                if seg.thumbnail is None:
                    seg.thumbnail = vis.thumbnail  # a speech entry shows the frame it was said over
        if self.long_term is not None and hasattr(self.long_term, "attach_text"):
            self.long_term.attach_text(a, b, seg.text)

    @_writes
    @_on_stream("perception")
    def ingest(self, chunk) -> ChunkReport:
        """Embed one chunk (``vstream.sources.Chunk``), prefill it against memory and commit it.

        Text waiting in the inbox enters the window first.
        """
        self._require_started()
        self.apply_inbox()
        t0 = time.perf_counter()
        a, mm = self.adapter, self.memory
        tokens = a.embed_chunk(a.chunk_marker(chunk), chunk.frames)
        tokens = self.drop_tokens(tokens)
        start = mm.next_pos
        with a.capture_projection_means("k") as kmeans:
            prefill(a, mm.cache, tokens, start, logits="none")
        key_summary = torch.stack([m.cpu() for m in kmeans]) if kmeans and kmeans[0] is not None else None  # [L, HD]
        return self._commit_chunk(chunk, tokens, start, key_summary, t0)

    @_writes
    @_on_stream("perception")
    def ingest_prefilled(self, chunk, tokens, start: int, cache_keys: Sequence[torch.Tensor],
                         cache_values: Sequence[torch.Tensor], key_summary: torch.Tensor | None,
                         t0: float | None = None) -> ChunkReport:
        """Commit a chunk prefilled elsewhere (a batched prefill over several streams, vstream.engine.batching).

        ``tokens`` is the chunk's ``Tokens``; ``start`` must be this memory's next position (the prefill ran
        there); ``cache_keys``/``cache_values`` per layer [1, H_kv, N + S, D]: this engine's cache (N tokens)
        followed by the chunk's K/V post-RoPE at ``start + rel_pos`` — the cache a prefill would leave (new
        tensors: snapshots keep the old ones). ``key_summary`` [L, H_kv * D] fp32. From here on it is
        ``ingest``: the same segment, evictions and long-term store.
        """
        self._require_started()
        mm = self.memory
        if start != mm.next_pos:
            raise RuntimeError(f"chunk was prefilled at position {start} but the memory is at {mm.next_pos}; "
                               f"prefill against this engine's current cache")
        if len(cache_keys) != self.adapter.num_layers or \
                int(cache_keys[0].shape[-2]) != mm.context_tokens + tokens.n_tokens:
            raise RuntimeError("prefilled K/V do not match the model's layers or this cache plus the chunk")
        n = tokens.n_tokens
        mm.append_prefilled([k[:, :, -n:] for k in cache_keys], [v[:, :, -n:] for v in cache_values])
        return self._commit_chunk(chunk, tokens, start, key_summary, time.perf_counter() if t0 is None else t0)

    def _commit_chunk(self, chunk, tokens, start: int, key_summary: torch.Tensor | None, t0: float) -> ChunkReport:
        """The prefilled chunk (the last ``tokens.n_tokens`` of the cache) becomes a live segment."""
        mm, mc = self.memory, self.config.memory
        mid = chunk.frames[len(chunk.frames) // 2]
        text = chunk.marker
        if self.ocr is not None:
            try:
                found = self.ocr(mid)
            except Exception as e:  # OCR is best effort: the chunk is stored without it
                logger.warning("OCR failed on chunk %d: %s", chunk.index, e)
                found = ""
            if found:
                text = f"{text} {found}"
        for a_s, b_s, said in self._speech:  # speech recognised before its chunk arrived
            if a_s < chunk.end_s and b_s > chunk.start_s:
                text = f"{text} {said}"
        wall = getattr(chunk, "wall_s", None)
        if wall is not None:
            self._clock_ref = (chunk.start_s, wall, chunk.tz)
        seg = mm.extract(tokens.n_tokens, start, tokens.rel_pos, VISION, start_s=chunk.start_s, end_s=chunk.end_s,
                         text=text, key_summary=key_summary,
                         thumbnail=make_thumbnail(mid, mc.thumbnail_px), chunk_index=chunk.index,
                         **self.wall_of(chunk.start_s, chunk.end_s) if wall is not None else {})
        evicted = mm.commit(seg)
        return ChunkReport(index=chunk.index, start_s=chunk.start_s, end_s=chunk.end_s, n_tokens=tokens.n_tokens,
                           latency_s=time.perf_counter() - t0, evicted=len(evicted), context_tokens=mm.context_tokens,
                           visual_kept=tokens.n_vision, visual_dropped=tokens.n_dropped)

    def drop_tokens(self, tokens):
        """Token drop (memory.token_drop): the chunk's tokens to prefill (``n_dropped`` says how many went).

        Perception calls it once per chunk, in stream order, before the prefill (the batched path too)."""
        tokens, _, self.last_keep = drop_chunk_tokens(self.adapter, self.token_drop, tokens)
        self.visual_tokens_kept += tokens.n_vision
        self.visual_tokens_dropped += tokens.n_dropped
        return tokens

    @_writes
    @_on_stream("perception")
    def commentary(self, chunk, max_tokens: int, replay: str | Sequence[int] | None = None) -> CommentaryItem:
        """Up to ``max_tokens`` tokens of live commentary after the chunk just ingested.

        The turn (assistant header, the words, the turn close) joins the text window with the K/V
        computed while decoding (kept, not recomputed). ``replay`` feeds given words instead of decoding:
        token ids (exact: what an earlier run generated) or text (tokenized).
        """
        self._require_started()
        t0 = time.perf_counter()
        a, mm = self.adapter, self.memory
        head = a.embed_text(a.commentary_open_text())
        start = mm.next_pos
        n0 = mm.context_tokens
        if replay is not None:
            word_ids = a.tokenize(replay) if isinstance(replay, str) else [int(t) for t in replay]
            prefill(a, mm.cache, head, start, logits="none")
            pos = start + head.span
            if word_ids:
                prefill(a, mm.cache, a.embed_ids(word_ids), pos, logits="none")
                pos += len(word_ids)
        else:
            logits = prefill(a, mm.cache, head, start)
            pos = start + head.span
            with self._commentary_lock:
                res = decode_n_tokens(a, mm.cache, logits, pos, self.config.generation, max_new_tokens=max_tokens,
                                      generator=self._commentary_generator, feed_last=True,
                                      static=self._static.get("commentary"))
            pos = res.next_pos
            word_ids = res.token_ids
        text = a.decode(word_ids).strip()
        close = a.embed_text(a.answer_close_text())
        prefill(a, mm.cache, close, pos, logits="none")
        n_new = mm.context_tokens - n0
        ids = head.input_ids[0].tolist() + list(word_ids) + close.input_ids[0].tolist()
        seg = mm.extract(n_new, start, a.text_positions(n_new), TEXT, start_s=chunk.start_s, end_s=chunk.end_s, text=text,
                         token_ids=tuple(ids), source="commentary" if text else "",  # kept in long-term (export)
                         **self.wall_of(chunk.start_s, chunk.end_s))
        for vis in reversed(mm.live):  # the chunk's entry text carries its commentary into long-term memory
            if vis.kind == VISION and vis.chunk_index == chunk.index:
                vis.text = f"{vis.text} {text}" if text else vis.text
                break
        mm.commit(seg)
        return CommentaryItem(start_s=chunk.start_s, end_s=chunk.end_s, text=text, chunk_index=chunk.index,
                              latency_s=time.perf_counter() - t0, token_ids=list(word_ids))

    @property
    def static_decoders(self) -> dict:
        """The ``StaticDecoder`` per decoding thread ("answer", "commentary"); {} with generation.decode=dynamic."""
        return self._static

    def snapshot(self) -> Snapshot:
        """The memory as of now (text waiting in the inbox enters the window first)."""
        if not self._inbox.empty():
            self.apply_inbox()
        return self.memory.snapshot()

    # ---- the text inbox (any thread) -------------------------------------------------------------
    def post_text(self, text: str, at_s: float | None = None, *, end_s: float | None = None,
                  source: str = "") -> None:
        """Queue text for the text window at stream time ``at_s`` (default: now); see ``add_text``.

        While a perception thread runs it adds the text before its next chunk (or a snapshot does);
        otherwise the text is added at once.
        """
        self._inbox.put((text, self.stream_time_s if at_s is None else at_s, end_s, source))
        if not self._perceiving:
            self.apply_inbox()

    def remember(self, ans: Answer) -> None:
        """Queue a question and its answer for the text window (multi-turn)."""
        a = self.adapter
        self.post_text(a.question_text(ans.question) + ans.text + a.answer_close_text(), ans.asked_at_s)

    def set_perceiving(self, on: bool) -> None:
        """Whether a perception thread applies the inbox; turning it off applies what waits now."""
        self._perceiving = on
        if not on:
            self.apply_inbox()

    def apply_inbox(self) -> None:
        """Add every text waiting in the inbox to the window, in order."""
        with self.write_lock:
            while True:
                try:
                    text, at_s, end_s, source = self._inbox.get_nowait()
                except queue.Empty:
                    return
                self.add_text(text, at_s, end_s=end_s, source=source)

    # ---- what the session reads ------------------------------------------------------------------
    @property
    def stream_time_s(self) -> float:
        return self.memory.stream_time_s

    @property
    def chunks_ingested(self) -> int:
        return self.memory.chunks_ingested

    @property
    def context_tokens(self) -> int:
        return self.memory.context_tokens

    def device_bytes(self) -> int:
        """Bytes of the active context's K/V on the device."""
        return self.memory.device_bytes()

    def live_vision(self) -> list[Segment]:
        """The vision chunks and tagged text (speech) in the live window, oldest first (what save/flush
        add to long-term)."""
        with self.write_lock:
            return [s for s in self.memory.live if s.kind == VISION or s.source]

    def resume_at(self, t_s: float) -> None:
        """Continue stream time from ``t_s`` (a session over memory saved earlier)."""
        with self.write_lock:
            self.memory.set_stream_time(t_s)

    def _require_started(self) -> None:
        if not self.started:
            raise RuntimeError("engine not started: call start() first")

    # ---- reader side (any thread, on a snapshot) -------------------------------------------------
    def _query_means(self, q_tokens, snap: Snapshot) -> torch.Tensor:
        """Mean pre-RoPE query vectors [L, H_kv*D] of the question, from a pass over the sinks only.

        The pass stops after the first ``memory.query_layers`` of the layers; the others stay zero (the
        index scores by the mean per-layer cosine, so they add nothing and the ranking uses those layers).
        """
        a = self.adapter
        n_sink = sum(s.n_tokens for s in snap.sinks)
        sink_pos = sum(s.span for s in snap.sinks)
        m = max(1, math.ceil(a.num_layers * self.config.memory.query_layers))
        cache = fill_cache(a.new_cache(), [k[:, :, :n_sink] for k in snap.keys], [v[:, :, :n_sink] for v in snap.values])
        with a.capture_projection_means("q", stop_after=m if m < a.num_layers else None) as qmeans:
            try:
                prefill(a, cache, q_tokens, sink_pos, logits="none")
            except StopForward:
                pass
        width = a.num_kv_heads * a.head_dim
        return torch.stack([x.cpu() if x is not None else torch.zeros(width) for x in qmeans])  # [L, HD]

    @_on_stream("answer")
    def prepare(self, question: str, snap: Snapshot, retrieve_k: int | None = None,
                retrieved: Sequence[Retrieved] | None = None, wall_range: tuple[float, float] | None = None):
        """Retrieve, assemble the context and prefill the question turn.

        Returns (cache, next_pos, logits [1, V], retrieved, query_means [L, H_kv*D]). ``retrieved`` forces
        the given entries (tests) instead of searching. ``question`` is non-empty (the Responder checks).
        ``wall_range`` (UTC epoch seconds, half-open): only long-term entries and live segments whose
        wall-clock span overlaps it are in the context (plus the sinks).
        """
        a, mc = self.adapter, self.config.memory
        q_tokens = a.embed_text(a.question_text(question.strip()))
        k = mc.retrieve_k if retrieve_k is None else retrieve_k
        qmeans = None
        if retrieved is None:
            retrieved = []
            if self.long_term is not None and k > 0 and len(self.long_term) > 0:
                qmeans = self._query_means(q_tokens, snap)
                live_vision = [s for s in snap.live if s.kind == VISION]
                first_live = live_vision[0].start_s if live_vision else snap.stream_time_s
                kw = {"wall_range": wall_range} if wall_range is not None else {}
                retrieved = self.long_term.retrieve(question=question, query_means=qmeans, k=k,
                                                    before_s=first_live, device=a.device, dtype=a.dtype, **kw)
        if wall_range is None:
            cache, pos = self.memory.assemble(snap, [r.segment for r in retrieved])
        else:
            cache, pos = self.memory.assemble_only(snap, [r.segment for r in retrieved],
                                                   lambda s: wall_overlaps(s, wall_range))
        if qmeans is None:
            with a.capture_projection_means("q") as qm:
                logits = prefill(a, cache, q_tokens, pos)
            qmeans = torch.stack([m.cpu() for m in qm]) if qm and qm[0] is not None else None
        else:
            logits = prefill(a, cache, q_tokens, pos)
        return cache, pos + q_tokens.span, logits, list(retrieved), qmeans

    @_on_stream("answer")
    def answer(self, question: str, snap: Snapshot, *, max_new_tokens: int | None = None,
               on_piece: Callable[[str], None] | None = None, cancel: threading.Event | None = None,
               retrieve_k: int | None = None, wall_range: tuple[float, float] | None = None) -> Answer:
        """Answer ``question`` on the memory as of ``snap``: retrieve, assemble, prefill, decode.

        ``wall_range`` (UTC epoch seconds, half-open, ``vstream.clock.parse_range``): answer only from what
        was recorded then; when nothing was, the answer is ``NOTHING_RECORDED`` and the model is not called.
        """
        a = self.adapter
        t0 = time.perf_counter()
        if wall_range is not None and recorded_in(snap.live, self.long_term, wall_range) == 0:
            if on_piece is not None:
                on_piece(NOTHING_RECORDED)
            return Answer(question=question, text=NOTHING_RECORDED, asked_at_s=snap.stream_time_s,
                          memory_s=snap.stream_time_s, ttft_s=0.0, latency_s=time.perf_counter() - t0)
        cache, pos, logits, retrieved, qmeans = self.prepare(question, snap, retrieve_k, wall_range=wall_range)
        streamer = TextStreamer(a)
        ttft: list[float] = []

        def on_token(tok: int) -> None:
            if not ttft:
                ttft.append(time.perf_counter() - t0)
            piece = streamer.push(tok)
            if piece and on_piece is not None:
                on_piece(piece)

        with self._gen_lock:
            res = decode_n_tokens(a, cache, logits, pos, self.config.generation, max_new_tokens=max_new_tokens,
                                  on_token=on_token, cancel=cancel, generator=self._generator,
                                  static=self._static.get("answer"))
        latency = time.perf_counter() - t0
        text = a.decode(res.token_ids).strip()
        evidence = long_term_evidence(retrieved)
        live = [s for s in snap.live if wall_overlaps(s, wall_range)]
        evidence += window_evidence([s for s in live if s.kind == VISION], qmeans)
        embedder = getattr(getattr(self.long_term, "index", None), "embedder", None)
        evidence += speech_evidence(embedder, question, [s for s in live if s.source == "speech"])
        return Answer(question=question, text=text, asked_at_s=snap.stream_time_s, memory_s=snap.stream_time_s,
                      evidence=evidence,
                      ttft_s=ttft[0] if ttft else latency, latency_s=latency, tokens=len(res.token_ids),
                      token_ids=[int(t) for t in res.token_ids],
                      cancelled=res.stopped == "cancelled")

    @_on_stream("answer")
    def probe(self, text: str, snap: Snapshot) -> float:
        """P("Yes") after "Has <text> happened in the latest chunk?": one forward step on the snapshot."""
        a = self.adapter
        q = a.embed_text(a.question_text(f"Has this happened in the latest part of the video: {text}? "
                                         f"Answer Yes or No."))
        cache, pos = self.memory.assemble(snap, [])
        logits = prefill(a, cache, q, pos)  # [1, V]
        probs = torch.softmax(logits[0].float(), dim=-1)
        yes_ids = {a.tokenize(w)[0] for w in ("Yes", " Yes", "yes") if a.tokenize(w)}
        return float(sum(probs[i] for i in yes_ids))
