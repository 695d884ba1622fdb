"""`vstream doctor MODEL`: verify a checkpoint (hub id, directory or preset) end to end before trusting it.

Checks, each a row of the printed table (non-zero exit when one fails):
1. processor  - the adapter's on-device preprocessing vs the family's HF PIL image processor built from
                the checkpoint's own preprocessor config (presets: the adapter's values); pixels (both cast
                to the model's dtype, as the model sees them), patch order, grids. Bound: 1e-6 (the
                adapters resize with PIL's arithmetic, exact to the level).
2. prompt     - the ids the engine feeds (system, chunks, kept answer turn, question) vs the checkpoint's
                chat template (its own, else the family's published one) rendered by transformers, with
                the HF processor's placeholder expansion; equal, or equal after the family's documented
                differences (LLaVA-OneVision, SmolVLM; listed in the row).
3. streaming  - streaming prefill vs one full HF forward at the model's dtype. Tolerance on the last
                logits: fp32 1e-4 absolute; bf16 / fp16 3e-2 x max(1, max |logit|) (8-bit / 11-bit
                mantissas: the two summation orders differ by a few ulps of the logit scale).
4. answer     - a short answer on data/sample.mp4 (any text: random weights answer noise).
5. memory / latency - KV bytes per token, peak memory, mean chunk ingest time and time to first token.
"""
from __future__ import annotations

import json
import logging
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample.mp4"  # the repository's data/
PIX_TOL = 1e-6



@dataclass
class Row:
    check: str
    ok: bool
    detail: str


def _frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 127 // (h + w)], -1)
    return np.clip(base[None] + rng.integers(-20, 21, (n, h, w, 3)), 0, 255).astype(np.uint8)


# ---- 1. processor -------------------------------------------------------------------------------
def checkpoint_config(a) -> dict:
    """The checkpoint's (video) preprocessor config, {} for presets (their values are the adapter's)."""
    from vstream.models.base import read_checkpoint_json

    if a.name.startswith(("tiny-", "small-")) or a.name.endswith("-random"):
        return {}
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        pp = read_checkpoint_json(a.name, name)
        if pp:
            return pp
    return {}


def _in_dtype(x, dtype: torch.dtype) -> np.ndarray:
    """Values as the model sees them: cast to its dtype (HF's processors return fp32, the model casts)."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype).float().numpy()


def check_processor(a, pp: dict | None = None) -> Row:
    """Adapter preprocessing vs the family's HF PIL image processor on two 240 x 320 frames.

    ``pp``: the checkpoint's preprocessor config; its mean / std / resample / patch values build the HF
    processor (so an adapter that read them wrong fails). The frame budget is the adapter's (deliberate).
    """
    pp = pp or {}
    frames = _frames(2, 240, 320)
    fam = a.family
    if fam in ("qwen2.5-vl", "qwen3-vl"):
        from transformers import Qwen2VLImageProcessorPil

        mean, std = pp.get("image_mean", a.image_mean.tolist()), pp.get("image_std", a.image_std.tolist())
        hf = Qwen2VLImageProcessorPil(min_pixels=min(a.min_pixels, a.target_side ** 2), max_pixels=a.target_side ** 2,
                                      patch_size=pp.get("patch_size", a.patch_size),
                                      merge_size=pp.get("merge_size", a.merge_size),
                                      temporal_patch_size=pp.get("temporal_patch_size", a.temporal_patch_size),
                                      image_mean=mean, image_std=std, resample=pp.get("resample", 3))
        pix, grid = a.preprocess(frames)
        gt, gh, gw = grid.tolist()
        p, tp = a.patch_size, a.temporal_patch_size
        ours = _in_dtype(pix.reshape(gt, gh * gw, 3, tp, p, p).cpu(), a.dtype)
        worst = 0.0
        for i, f in enumerate(frames):
            out = hf(images=[f], return_tensors="np")
            if out["image_grid_thw"].tolist() != [[1, gh, gw]]:
                return Row("processor", False, f"grid {out['image_grid_thw'].tolist()} vs ours {[1, gh, gw]}")
            theirs = _in_dtype(out["pixel_values"].reshape(gh * gw, 3, tp, p, p)[:, :, 0], a.dtype)
            worst = max(worst, float(np.abs(ours[i // tp, :, :, i % tp] - theirs).max()))
        detail = f"grid {gt}x{gh}x{gw}, {gt * gh * gw // a.merge_size ** 2} tokens, max |dpixel| {worst:.2g}"
    elif fam == "llava-onevision":
        from transformers import LlavaOnevisionImageProcessorPil

        s = a.frame_size
        hf = LlavaOnevisionImageProcessorPil(size={"height": s, "width": s}, resample=pp.get("resample", 3),
                                             image_mean=pp.get("image_mean", list(a.image_mean)),
                                             image_std=pp.get("image_std", list(a.image_std)),
                                             image_grid_pinpoints=[[s, s]])
        ours = _in_dtype(a.preprocess(frames).cpu(), a.dtype)
        worst = max(float(np.abs(ours[i] - _in_dtype(hf(images=[f], return_tensors="np")["pixel_values"][0][0],
                                                     a.dtype)).max()) for i, f in enumerate(frames))
        detail = f"{s}x{s}, {a.vision_tokens(len(frames))} tokens, max |dpixel| {worst:.2g}"
    elif fam == "smolvlm":
        from transformers import SmolVLMImageProcessorPil

        code = pp.get("resample", {"lanczos": 1, "bilinear": 2, "bicubic": 3}[a.resample])
        hf = SmolVLMImageProcessorPil(do_image_splitting=False, size={"longest_edge": a.video_longest_edge},
                                      max_image_size={"longest_edge": a.frame_size}, resample=code,
                                      image_mean=pp.get("image_mean", a.image_mean.flatten().tolist()),
                                      image_std=pp.get("image_std", a.image_std.flatten().tolist()))
        ours = _in_dtype(a.preprocess(frames).cpu(), a.dtype)
        worst = max(float(np.abs(ours[i] - _in_dtype(hf(images=[[f]], return_tensors="np")["pixel_values"][0][0],
                                                     a.dtype)).max()) for i, f in enumerate(frames))
        detail = (f"{a.frame_size}x{a.frame_size} ({a.resample}), {a.image_seq_len} tokens/frame, "
                  f"max |dpixel| {worst:.2g}")
    else:
        return Row("processor", False, f"no reference processor known for family {fam!r}")
    return Row("processor", worst <= PIX_TOL, detail)


# ---- 2. prompt ----------------------------------------------------------------------------------
def _engine_ids(a, engine_cls, cfg, chunks, q1, ans, q2) -> list[int]:
    fed: list[int] = []
    orig_text, orig_chunk = a.embed_text, a.embed_chunk

    def embed_text(text):
        t = orig_text(text)
        fed.extend(t.input_ids[0].tolist())
        return t

    def embed_chunk(marker, frames):
        t = orig_chunk(marker, frames)
        fed.extend(t.input_ids[0].tolist())
        return t

    a.embed_text, a.embed_chunk = embed_text, embed_chunk
    try:
        eng = engine_cls(a, cfg)
        eng.start()
        eng.ingest(chunks[0])
        eng.ingest(chunks[1])
        eng.add_text(a.question_text(q1) + ans + a.answer_close_text())
        eng.ingest(chunks[2])
        eng.prepare(q2, eng.snapshot())
    finally:
        del a.embed_text, a.embed_chunk
    return fed


def check_prompt(a, cfg) -> Row:
    """Engine ids vs the chat template (the checkpoint's own when it has one) with HF's placeholder expansion."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from vstream.engine.core import Engine
    from vstream.models.chat_templates import TEMPLATES
    from vstream.sources.chunking import Chunk

    if a.family == "smolvlm":
        return _check_prompt_smolvlm(a, cfg)
    rng = np.random.default_rng(1)
    chunks = [Chunk(index=i, start_s=float(i), end_s=i + 1.0, frames=rng.integers(0, 256, (2, 64, 64, 3), np.uint8),
                    timestamps=[i, i + 0.5]) for i in range(3)]
    sysmsg, q1, ans, q2 = cfg.system_prompt, "What is on screen?", "A square.", "And now?"
    ours = _engine_ids(a, Engine, cfg, chunks, q1, ans, q2)
    template = getattr(a.tokenizer, "chat_template", None) or TEMPLATES[a.family]
    items = a.family == "llava-onevision"
    t = (lambda x: [{"type": "text", "text": x}]) if items else (lambda x: x)  # noqa: E731
    if a.family == "qwen2.5-vl":
        vid = lambda c: [{"type": "text", "text": c.marker}, {"type": "video"}]  # noqa: E731
    else:
        vid = lambda c: [{"type": "video"}]  # noqa: E731
    msgs = [{"role": "system", "content": t(sysmsg)}, {"role": "user", "content": vid(chunks[0]) + vid(chunks[1])},
            {"role": "user", "content": t(q1)}, {"role": "assistant", "content": t(ans)},
            {"role": "user", "content": vid(chunks[2])}, {"role": "user", "content": t(q2)}]
    text = render_jinja_template(conversations=[msgs], chat_template=template, add_generation_prompt=True)[0][0]
    note = "equal to the template"
    for c in chunks:  # the processor's placeholder expansion, per family
        if a.family == "qwen2.5-vl":
            grid = a.preprocess(c.frames)[1]
            text = text.replace("<|video_pad|>", "\0" * (int(grid.prod()) // a.merge_size ** 2), 1)
        elif a.family == "qwen3-vl":
            grid = a.preprocess(c.frames)[1]
            per = int(grid[1] * grid[2]) // a.merge_size ** 2
            # Qwen3VLProcessor: per temporal patch "<t seconds>" + start + pads + end replaces the template's span
            fps = len(c.frames) / (c.end_s - c.start_s)
            times = [c.start_s + (2 * k + 0.5) / fps for k in range(int(grid[0]))]
            ph = "".join(f"<{x:.1f} seconds><|vision_start|>" + "\0" * per + "<|vision_end|>" for x in times)
            text = text.replace("<|vision_start|><|video_pad|><|vision_end|>", ph, 1)
        else:  # llava-onevision; documented: marker before each video, no newline after it
            text = text.replace("<video>\n", c.marker + "\0" * a.vision_tokens(len(c.frames)), 1)
            note = "equal after the documented differences (marker before each video, no newline after it)"
    pad = {"qwen2.5-vl": "<|video_pad|>", "qwen3-vl": "<|video_pad|>", "llava-onevision": "<video>"}[a.family]
    theirs = a.tokenizer(text.replace("\0", pad), add_special_tokens=False)["input_ids"]
    if ours == theirs:
        return Row("prompt", True, f"{len(ours)} tokens, {note}")
    first = next((i for i, (x, y) in enumerate(zip(ours, theirs)) if x != y), min(len(ours), len(theirs)))
    return Row("prompt", False, f"{len(ours)} vs {len(theirs)} tokens, first difference at token {first}: "
                                f"{a.tokenizer.decode(ours[first:first + 8])!r} vs "
                                f"{a.tokenizer.decode(theirs[first:first + 8])!r}")


def _check_prompt_smolvlm(a, cfg) -> Row:
    """SmolVLM: the stream and the question share one user turn; documented differences substituted."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from vstream.models.chat_templates import SMOLVLM_TEMPLATE

    from vstream.engine.core import Engine
    from vstream.sources.chunking import Chunk

    rng = np.random.default_rng(1)
    chunks = [Chunk(index=i, start_s=float(i), end_s=i + 1.0, frames=rng.integers(0, 256, (2, 64, 64, 3), np.uint8),
                    timestamps=[i, i + 0.5]) for i in range(3)]
    q1, ans, q2 = "What is on screen?", "A square.", "And now?"
    ours = _engine_ids(a, Engine, cfg, chunks, q1, ans, q2)
    msgs = [{"role": "system", "content": cfg.system_prompt},
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q1}]},
            {"role": "assistant", "content": ans},
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q2}]}]
    # a checkpoint's own SmolVLM template renders images only; HF switches to this one for videos too
    text = render_jinja_template(conversations=[msgs], chat_template=SMOLVLM_TEMPLATE,
                                 add_generation_prompt=True)[0][0]
    frame = a.frame_text()
    for cs in (chunks[:2], chunks[2:]):
        stream = "".join(f"\n{c.marker}:" + frame * len(c.frames) for c in cs)
        text = text.replace("User: <video>", "User:" + stream + "\n\n", 1)
    text = text.replace("Assistant: " + ans, "Assistant:" + ans, 1)
    theirs = a.tokenizer(text, add_special_tokens=False)["input_ids"]
    if ours == theirs:
        return Row("prompt", True, f"{len(ours)} tokens, equal after the documented differences (no video intro, "
                                   f"one time marker per chunk, no space after 'User:')")
    return Row("prompt", False, f"{len(ours)} tokens, differs from the template ({len(theirs)} tokens)")


# ---- 3. streaming --------------------------------------------------------------------------------
def streaming_tolerance(dtype: torch.dtype, ref: torch.Tensor) -> float:
    """fp32: 1e-4 absolute; bf16 / fp16: 3e-2 of the logit scale (at least 3e-2)."""
    if dtype == torch.float32:
        return 1e-4
    return 3e-2 * max(1.0, float(ref.abs().max()))


def check_streaming(a, cfg) -> tuple[Row, dict]:
    """Streaming prefill of 4 chunks vs one full HF forward over the same sequence; also times ingest."""
    from vstream.engine.core import Engine
    from vstream.sources.chunking import Chunk

    side = 64 if a.name.startswith("tiny-") else 224
    chunks = [Chunk(index=i, start_s=float(i), end_s=i + 1.0, frames=_frames(2, side, side, seed=i),
                    timestamps=[i, i + 0.5]) for i in range(4)]
    eng = Engine(a, cfg.replace(**{"memory.window_chunks": 100, "memory.long_term": False}))
    eng.start()
    times = []
    for ch in chunks:
        t0 = time.perf_counter()
        eng.ingest(ch)
        times.append(time.perf_counter() - t0)
    q = "What happened in the video?"
    _, _, logits, _, _ = eng.prepare(q, eng.snapshot())
    pieces = [a.system_text(eng.config.system_prompt)] + [(c.marker, c.frames) for c in chunks] + [a.question_text(q)]
    ref = a.reference_logits(pieces)
    diff = float((logits[0].float() - ref.float()).abs().max())
    tol = streaming_tolerance(a.dtype, ref)
    return (Row("streaming", diff <= tol and math.isfinite(diff),
                f"{str(a.dtype).replace('torch.', '')}: max |dlogit| {diff:.3g} (tolerance {tol:.3g}), "
                f"{eng.memory.context_tokens} tokens"),
            {"ingest_s": float(np.mean(times[1:] or times))})


# ---- 4. answer + 5. memory / latency ------------------------------------------------------------
def check_answer(a, cfg, video: Path) -> tuple[Row, dict]:
    from vstream.api import Agent

    if not video.is_file():
        return Row("answer", False, f"{video} not found; give --video"), {}
    agent = Agent(a, cfg.replace(**{"memory.long_term": False, "generation.max_new_tokens": 8}))
    with agent.watch(str(video), background=False) as session:
        ans = session.ask("What color is the shape?", max_new_tokens=8)
    return Row("answer", True, f"{ans.text[:60]!r} ({ans.tokens} tokens)"), {"ttft_s": ans.ttft_s}


def _peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU peak {torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB"
    return f"RSS peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB"


def run(model: str, device: str = "auto", dtype: str = "auto", video: Path = SAMPLE) -> list[Row]:
    """Load ``model`` and run every check; returns the table rows."""
    from vstream.config import from_name
    from vstream.models.registry import load_model

    t0 = time.perf_counter()
    a = load_model(model, device=device, dtype=dtype)
    rows = [Row("load", True, f"{a.name} ({a.family}) on {a.device}, {str(a.dtype).replace('torch.', '')}, "
                              f"{time.perf_counter() - t0:.1f}s")]
    cfg = from_name("tiny" if a.name.startswith("tiny-") else "default").replace(model=a.name)
    stats: dict = {}
    checks = (("processor", lambda: (check_processor(a, checkpoint_config(a)), {})),
              ("prompt", lambda: (check_prompt(a, cfg), {})), ("streaming", lambda: check_streaming(a, cfg)),
              ("answer", lambda: check_answer(a, cfg, video)))
    for name, fn in checks:
        try:
            row, extra = fn()
        except Exception as e:  # a check that crashes fails; the others still run
            logger.debug("check %s failed", name, exc_info=True)
            row, extra = Row(name, False, f"error: {' '.join(str(e).split())[:160] or type(e).__name__}"), {}
        rows.append(row)
        stats.update(extra)
    kv = a.kv_bytes_per_token()
    rows.append(Row("memory", True, f"KV {kv / 1024:.1f} KiB/token, {_peak_memory(a.device)}"))
    lat = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in (("chunk ingest", stats.get("ingest_s")),
                                                           ("TTFT", stats.get("ttft_s"))) if v is not None)
    rows.append(Row("latency", True, lat or "not measured"))
    return rows


def format_table(rows: list[Row]) -> str:
    w = max(len(r.check) for r in rows)
    lines = [f"{'check'.ljust(w)}  result  detail", f"{'-' * w}  ------  {'-' * 40}"]
    lines += [f"{r.check.ljust(w)}  {'PASS' if r.ok else 'FAIL':6}  {r.detail}" for r in rows]
    return "\n".join(lines)


def cmd_doctor(args) -> int:
    rows = run(args.model, device=args.device, dtype=args.dtype, video=Path(args.video))
    if args.json:
        print(json.dumps([r.__dict__ for r in rows]))
    else:
        print(format_table(rows))
    failed = [r.check for r in rows if not r.ok]
    if failed:
        logger.warning("doctor: %s failed", ", ".join(failed))
    return 1 if failed else 0


def add_parser(sub) -> None:
    """`vstream doctor MODEL` (registered by vstream.cli.main)."""
    d = sub.add_parser("doctor", help="verify a checkpoint: processor and prompt parity, streaming == full "
                                      "forward, a short answer, memory and latency")
    d.add_argument("model", help="hub id, local checkpoint directory or preset (e.g. tiny-qwen3-vl)")
    d.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1")
    d.add_argument("--dtype", default="auto", help="auto (bf16 on GPU), float32, bfloat16, float16")
    d.add_argument("--video", default=str(SAMPLE), help="video for the short answer (default data/sample.mp4)")
    d.add_argument("--json", action="store_true", help="the rows as one JSON list")
    d.set_defaults(func=cmd_doctor)

