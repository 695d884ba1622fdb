"""Processor parity: the adapters' on-device preprocessing == the official HF (PIL-backed) image processors.

Each HF processor is built with the values of the published checkpoint's preprocessor config, written
here as facts with their source, and fed the same uint8 frames. Compared: pixel values after
normalisation, patch order (row for row), grid sizes and token counts.

Both resize paths run every comparison (the ``resize_path`` fixture): Pillow itself (the CPU default) and
the torch reproduction (the path on GPUs, forced on CPU here with ``torch_resize()``).

Bound: the adapters resize with PIL's own arithmetic (``vstream.models.resize.resize_like_pil``: separable
passes, 22-bit fixed-point weights, 8-bit rounding after each pass), so the resized pixels are PIL's to
the level; what is left is float32 rounding in the normalisation, below 1e-6 after dividing by std.
(The adapters' previous resize, torch's antialiased bicubic in float, was measured at up to 18.6 levels
off PIL on the white-noise frames here and 2.4 levels on the smooth ones: 0.28 and 0.036 after CLIP's std.)

One value differs from a checkpoint on purpose: Qwen's ``max_pixels``. The adapters cap each frame at
``frame_size ** 2`` pixels (448 ** 2 by default) to bound tokens per chunk, where the published image
config allows 12845056; the HF processor is given the same budget for that comparison, and a second
comparison runs at the checkpoint's own budget.
"""
from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from conftest import tiny_adapter
from vstream.models.resize import resize_like_pil as _RESIZE_LIKE_PIL

PIX_TOL = 1e-6


@pytest.fixture(autouse=True, params=["pillow", "torch"])
def resize_path(request, monkeypatch):
    """Run each comparison on both resize paths; the other path is made to fail, so the named one ran."""
    from vstream.models import resize

    def refuse(*a, **k):
        raise AssertionError(f"the {request.param} path was asked for, but the other one ran")

    if request.param == "torch":
        with resize.torch_resize():
            monkeypatch.setattr(resize, "_pil_chain", refuse)
            yield request.param
    else:
        assert resize.uses_pillow("cpu")
        monkeypatch.setattr(resize, "resize_like_pil", refuse)
        yield request.param

#: OpenAI CLIP mean/std.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

#: Qwen/Qwen2.5-VL-7B-Instruct preprocessor_config.json (same values in the 3B/72B configs and their mirrors).
QWEN25_PP = dict(min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2, merge_size=2,
                 image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3)  # resample: not in the file; 3 is the default
#: Qwen/Qwen3-VL-{2B,4B,8B}-Instruct preprocessor_config.json (images: size longest/shortest_edge 16777216 / 65536)
#: and video_preprocessor_config.json (videos: 25165824 / 4096); patch 16, merge 2, temporal 2, mean/std 0.5.
QWEN3_PP = dict(min_pixels=4096, max_pixels=16777216, patch_size=16, temporal_patch_size=2, merge_size=2,
                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=3)
#: llava-hf/llava-onevision-qwen2-{0.5b,7b}-ov-hf preprocessor_config.json / video_processor config:
#: 384 x 384, bicubic (resample 3), mean/std 0.5 (SigLIP), do_pad; processor_config.json num_image_tokens 729.
LLAVA_PP = dict(size={"height": 384, "width": 384}, resample=3, image_mean=[0.5, 0.5, 0.5],
                image_std=[0.5, 0.5, 0.5], do_pad=True)
LLAVA_NUM_IMAGE_TOKENS = 729
#: HuggingFaceTB/SmolVLM2-256M-Video-Instruct preprocessor_config.json: max_image_size.longest_edge 512,
#: resample 1 (LANCZOS), mean/std 0.5, video_sampling.video_size.longest_edge 512; processor_config.json
#: image_seq_len 64.
SMOL_PP = dict(max_image_size={"longest_edge": 512}, size={"longest_edge": 512}, resample=1,
               image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_image_splitting=False, do_pad=True)
SMOL_IMAGE_SEQ_LEN = 64


def _frames(seed: int, n: int, h: int, w: int, smooth: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if not smooth:
        return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]  # gradients + noise: more like video than white noise
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 127 // (h + w))], -1)
    noise = rng.integers(-20, 21, (n, h, w, 3))
    return np.clip(base[None] + noise, 0, 255).astype(np.uint8)


def _report(name: str, diff: float) -> None:
    print(f"[parity] {name}: max |pixel difference| after normalisation = {diff:.3g}")


def _qwen_case(adapter, pp: dict, frames: np.ndarray, budget: int, name: str):
    """Compare adapter.preprocess(frames) with Qwen2VLImageProcessorPil frame by frame; returns the grid."""
    from transformers import Qwen2VLImageProcessorPil

    hf = Qwen2VLImageProcessorPil(**{**pp, "max_pixels": budget})
    pix, grid = adapter.preprocess(frames)
    gt, gh, gw = grid.tolist()
    p, tp = pp["patch_size"], pp["temporal_patch_size"]
    ours = pix.reshape(gt, gh * gw, 3, tp, p, p).cpu().numpy()
    worst = 0.0
    for i, f in enumerate(frames):
        out = hf(images=[f], return_tensors="np")
        assert out["image_grid_thw"].tolist() == [[1, gh, gw]], name  # same grid
        theirs = out["pixel_values"].reshape(gh * gw, 3, tp, p, p)[:, :, 0]  # rows in HF's patch order
        worst = max(worst, float(np.abs(ours[i // tp, :, :, i % tp] - theirs).max()))
    # token count: HF's rule for a video of this grid (Qwen2_5_VLProcessor / Qwen3VLProcessor)
    assert (ours.shape[0] * ours.shape[1]) // pp["merge_size"] ** 2 == gt * gh * gw // 4
    _report(name, worst)
    assert worst <= PIX_TOL, name
    return gt, gh, gw


@pytest.mark.parametrize("case", ["checkpoint-budget", "frame-budget-448", "upscale-small"])
def test_qwen2_5_vl_matches_hf_processor(case):
    from vstream.models.qwen2_5_vl import Qwen25VLAdapter

    tiny = tiny_adapter("tiny-qwen2.5-vl")
    frames, side = {"checkpoint-budget": (_frames(1, 2, 120, 200), math.isqrt(QWEN25_PP["max_pixels"])),
                    "frame-budget-448": (_frames(2, 2, 360, 640, smooth=True), 448),
                    "upscale-small": (_frames(3, 2, 37, 61), 448)}[case]
    a = Qwen25VLAdapter(tiny.model, tiny.tokenizer, name="parity", frame_size=side, image_mean=CLIP_MEAN,
                        image_std=CLIP_STD, min_pixels=QWEN25_PP["min_pixels"])
    gt, gh, gw = _qwen_case(a, QWEN25_PP, frames, side * side, f"qwen2.5-vl {case}")
    assert gt == 1 and (gh * 14, gw * 14) == a.resized_hw(*frames.shape[1:3])
    assert a.chunk_ids("T", torch.tensor([gt, gh, gw])).count(a.video_token_id) == gt * gh * gw // 4


@pytest.mark.parametrize("case", ["frame-budget-448", "checkpoint-image-budget"])
def test_qwen3_vl_matches_hf_processor(case):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as video_rule

    from vstream.models.qwen3_vl import Qwen3VLAdapter

    tiny = tiny_adapter("tiny-qwen3-vl")
    frames, side = {"frame-budget-448": (_frames(4, 4, 360, 640, smooth=True), 448),
                    "checkpoint-image-budget": (_frames(5, 2, 300, 500), math.isqrt(QWEN3_PP["max_pixels"]))}[case]
    a = Qwen3VLAdapter(tiny.model, tiny.tokenizer, name="parity", frame_size=side, min_pixels=QWEN3_PP["min_pixels"])
    gt, gh, gw = _qwen_case(a, QWEN3_PP, frames, side * side, f"qwen3-vl {case}")
    assert gt == len(frames) // 2
    # the video processor's own size rule (total budget over the frames) lands on the same grid
    n = len(frames)
    h, w = video_rule(n, frames.shape[1], frames.shape[2], temporal_factor=2, factor=32,
                      min_pixels=QWEN3_PP["min_pixels"], max_pixels=n * side * side)
    assert (h // 16, w // 16) == (gh, gw)


def _llava_384():
    """A LLaVA-OneVision adapter with the published 384 px / patch 14 vision geometry and tiny widths."""
    from vstream.models import llava_onevision as lo

    vision = dict(lo._VISION["tiny"], image_size=384, patch_size=14)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(lo._VISION, "p384", vision)
        mp.setitem(lo._TEXT, "p384", lo._TEXT["tiny"])
        return lo.LlavaOneVisionAdapter.random("p384", device="cpu", dtype=torch.float32)


def test_llava_onevision_matches_hf_processor():
    from transformers import LlavaOnevisionImageProcessorPil
    from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor

    a = _llava_384()
    pinpoints = [[h, w] for h in range(384, 2305, 384) for w in range(384, 2305, 384)]  # published, 6 x 6
    hf = LlavaOnevisionImageProcessorPil(**LLAVA_PP, image_grid_pinpoints=pinpoints)
    worst = 0.0
    for frames in (_frames(6, 2, 360, 640, smooth=True), _frames(7, 1, 500, 380), _frames(12, 1, 384, 384)):
        ours = a.preprocess(frames).cpu().numpy()  # [N, 3, 384, 384]
        for i, f in enumerate(frames):
            base = hf(images=[f], return_tensors="np")["pixel_values"][0][0]  # the whole frame at 384 x 384
            assert base.shape == ours[i].shape == (3, 384, 384)
            worst = max(worst, float(np.abs(ours[i] - base).max()))
    _report("llava-onevision 384", worst)
    assert worst <= PIX_TOL
    proc = types.SimpleNamespace(num_image_tokens=LLAVA_NUM_IMAGE_TOKENS, video_token="<video>")
    for n in (1, 4, 8):
        hf_count = LlavaOnevisionProcessor.replace_video_token(
            proc, {"pixel_values_videos": [np.zeros((n, 3, 384, 384))]}, 0).count("<video>")
        assert a.vision_tokens(n) == hf_count == n * 196 + 1


def _smol_512():
    """A SmolVLM adapter with SmolVLM2-256M's vision geometry (512 px, patch 16, scale 4) and tiny widths."""
    from dataclasses import replace

    from vstream.models import smolvlm as sm

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sm.SIZES, "p512", replace(sm.SIZES["tiny"], patch=16, image=512, scale_factor=4))
        return sm.SmolVLMAdapter.random("p512", device="cpu", dtype=torch.float32)


def test_smolvlm_matches_hf_processor():
    from transformers import SmolVLMImageProcessorPil

    a = _smol_512()
    assert (a.frame_size, a.video_longest_edge, a.resample) == (512, 512, "lanczos")
    hf = SmolVLMImageProcessorPil(**SMOL_PP)
    worst = 0.0
    for frames in (_frames(8, 2, 360, 640, smooth=True), _frames(9, 1, 300, 211), _frames(10, 1, 64, 96)):
        ours = a.preprocess(frames).cpu().numpy()  # [N, 3, 512, 512]
        for i, f in enumerate(frames):
            out = hf(images=[[f]], return_tensors="np")
            theirs = out["pixel_values"][0][0]
            assert theirs.shape == ours[i].shape == (3, 512, 512) and out["pixel_attention_mask"][0][0].all()
            worst = max(worst, float(np.abs(ours[i] - theirs).max()))
    _report("smolvlm 512", worst)
    assert worst <= PIX_TOL
    assert a.image_seq_len == SMOL_IMAGE_SEQ_LEN and a.vision_tokens(3) == 3 * SMOL_IMAGE_SEQ_LEN


def test_tiny_presets_follow_the_same_rules():
    """The tiny presets use the same code path: their frames also equal HF's processors at their sizes."""
    a = tiny_adapter("tiny-qwen2.5-vl")
    frames = _frames(11, 2, 32, 48)
    _qwen_case(a, {**QWEN25_PP, "min_pixels": a.min_pixels}, frames, a.target_side ** 2, "tiny-qwen2.5-vl")


@pytest.mark.parametrize("resample", ["bicubic", "lanczos", "bilinear"])
def test_pillow_and_torch_paths_give_the_same_levels(resample, resize_path):
    """Both paths of ``resize_frames`` give the same 8-bit levels, down- and upscaling, one and two resizes."""
    from vstream.models import resize

    if resize_path == "torch":
        pytest.skip("compares both paths itself")
    frames = np.concatenate([_frames(13, 1, 72, 128, smooth=True), _frames(14, 1, 72, 128)])
    for sizes in ([(36, 50)], [(90, 130)], [(48, 64), (40, 40)], [(72, 128)]):
        ours = resize.resize_frames(frames, sizes, resample, "cpu")
        with resize.torch_resize(), pytest.MonkeyPatch.context() as mp:
            mp.setattr(resize, "resize_like_pil", _RESIZE_LIKE_PIL)  # the fixture made it refuse
            ref = resize.resize_frames(frames, sizes, resample, "cpu")
        assert ours.shape == ref.shape == (2, 3, *sizes[-1])
        assert torch.equal((ours * 255).round(), (ref * 255).round()), sizes
    with pytest.raises(ValueError, match="resample"):
        resize.resize_frames(frames, [(8, 8)], "nearest", "cpu")
