"""Prompt parity: the token ids the engine feeds == each checkpoint's own chat template, or documented differences.

Every test runs with stream-time markers and with clock markers (live sources), so both reach the model as
text exactly as the template renders it.

The conversation: system prompt; a stream turn (the user turn the chunks are written into); a question;
the assistant's answer (kept in the text window, as the session does); one more chunk; a second
question and the open assistant turn. The engine side is recorded from a real Engine (start, ingest,
add_text, prepare). The template side renders the published template text below with transformers'
own jinja renderer, expands the video placeholders with the family's HF processor rule (called from
transformers), and tokenizes the string with the same offline tokenizer. The offline tokenizer is
byte-level with the special tokens atomic, so equal ids mean equal special tokens, placeholders and
text, piece for piece.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from transformers.utils.chat_template_utils import render_jinja_template

from conftest import make_chunks, tiny_adapter
from vstream.config import from_name
from vstream.engine.core import Engine

SYSTEM = "You watch a live stream."
Q1, A1, Q2 = "What is on screen?", "A red square.", "And now?"

#: Qwen/Qwen2.5-VL-7B-Instruct chat_template.json (the Qwen2-VL-Instruct template; same text in
#: Qwen/Qwen2-VL-7B-Instruct and in the 7B-Instruct mirrors found: 1.05 kB file).
QWEN25_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)

#: Qwen/Qwen3-VL-*-Instruct chat_template.json, the branch without tools (system, user, assistant text and
#: vision items); taken from a Qwen3-VL-8B fine-tune that ships the official template unchanged. The tool,
#: tool-response and reasoning branches are left out: the engine never produces those messages.
QWEN3_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\n' }}{%- if messages[0].content is string %}"
    "{{- messages[0].content }}{%- else %}{%- for content in messages[0].content %}{%- if 'text' in content %}"
    "{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}{{- '<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role == 'user' %}{{- '<|im_start|>' + message.role + '\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}{%- elif content.type == 'video' or 'video' in content %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}{%- elif 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|im_end|>\n' }}{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

#: llava-hf/llava-onevision-qwen2-{0.5b,7b}-ov-hf chat_template.json, as written by transformers'
#: models/llava_onevision/convert_llava_onevision_weights_to_hf.py (the script that made those checkpoints).
LLAVA_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: HuggingFaceTB/SmolVLM2-{256M,500M}-Video-Instruct chat_template.json renders images only; for a conversation
#: with videos SmolVLMProcessor.apply_chat_template switches to its DEFAULT_CHAT_TEMPLATE
#: (transformers models/smolvlm/processing_smolvlm.py), which adds the video item. That one is used here.
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'] is string %}"
    "{{': ' + message['content']}}{% else %}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}"
    "{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}"
    "{% endif %}"
)


def test_library_templates_are_the_published_ones():
    from vstream.models import chat_templates as ct

    assert (ct.QWEN25_TEMPLATE, ct.QWEN3_TEMPLATE, ct.LLAVA_TEMPLATE, ct.SMOLVLM_TEMPLATE) == (
        QWEN25_TEMPLATE, QWEN3_TEMPLATE, LLAVA_TEMPLATE, SMOLVLM_TEMPLATE)


def _engine_ids(adapter, chunks) -> list[int]:
    """Token ids the engine has fed for the second question: sinks, chunks, kept answer turn, chunk, question."""
    cfg = from_name("tiny").replace(**{"memory.window_chunks": 100, "memory.long_term": False,
                                       "memory.text_window_tokens": 10_000})
    eng = Engine(adapter, cfg)
    fed: list[list[int]] = []
    orig_text, orig_chunk = adapter.embed_text, adapter.embed_chunk

    def embed_text(text):
        t = orig_text(text)
        fed.append(t.input_ids[0].tolist())
        return t

    def embed_chunk(marker, frames):
        t = orig_chunk(marker, frames)
        fed.append(t.input_ids[0].tolist())
        return t

    adapter.embed_text, adapter.embed_chunk = embed_text, embed_chunk
    try:
        eng.config = eng.config.replace(system_prompt=SYSTEM)
        eng.start()
        eng.ingest(chunks[0])
        eng.ingest(chunks[1])
        eng.add_text(adapter.question_text(Q1) + A1 + adapter.answer_close_text())  # what the session keeps
        eng.ingest(chunks[2])
        eng.prepare(Q2, eng.snapshot())
    finally:
        del adapter.embed_text, adapter.embed_chunk
    return [i for piece in fed for i in piece]


def _conversation(stream1: list, stream2: list, items: bool = False) -> list[dict]:
    """The conversation the engine holds; ``items`` writes text messages as [{"type": "text"}] lists."""
    t = (lambda x: [{"type": "text", "text": x}]) if items else (lambda x: x)  # noqa: E731
    return [{"role": "system", "content": t(SYSTEM)}, {"role": "user", "content": stream1},
            {"role": "user", "content": t(Q1)}, {"role": "assistant", "content": t(A1)},
            {"role": "user", "content": stream2}, {"role": "user", "content": t(Q2)}]


def _render(template: str, messages: list[dict]) -> str:
    rendered, _ = render_jinja_template(conversations=[messages], chat_template=template, add_generation_prompt=True)
    return rendered[0]


def _tok(adapter, text: str) -> list[int]:
    return adapter.tokenizer(text, add_special_tokens=False)["input_ids"]


#: clock markers (memory.time_marker "clock"): 2026-07-01 14:05:03 in Berlin (CEST, UTC+2) is 12:05:03 UTC
CLOCK_T0 = 1782907503.0


@pytest.fixture(scope="module", params=["stream", "clock"])
def chunks(request):
    """The same chunks with stream markers (``Time=0.0-1.0s``) and with clock markers (``Time=14:05:03-14:05:04``,
    the form live sources use): each template test checks the engine's ids against the template for both."""
    cs = make_chunks(3, frames=2, size=32, seed=11)
    if request.param == "clock":
        for c in cs:
            c.wall_s, c.tz, c.clock = CLOCK_T0 + c.start_s, "Europe/Berlin", True
        assert [c.marker for c in cs] == ["Time=14:05:03-14:05:04", "Time=14:05:04-14:05:05",
                                          "Time=14:05:05-14:05:06"]
    else:
        assert [c.marker for c in cs] == ["Time=0.0-1.0s", "Time=1.0-2.0s", "Time=2.0-3.0s"]
    return cs


def test_qwen2_5_vl_prompt_is_the_template(chunks):
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

    a = tiny_adapter("tiny-qwen2.5-vl")
    ours = _engine_ids(a, chunks)
    grids = [a.preprocess(c.frames)[1] for c in chunks]
    vid = lambda c: [{"type": "text", "text": c.marker}, {"type": "video"}]  # noqa: E731
    text = _render(QWEN25_TEMPLATE, _conversation(vid(chunks[0]) + vid(chunks[1]), vid(chunks[2])))
    proc = types.SimpleNamespace(video_processor=types.SimpleNamespace(merge_size=a.merge_size),
                                 video_token="<|video_pad|>")
    for i, g in enumerate(grids):  # HF's own expansion of each video placeholder, in order
        pads = Qwen2_5_VLProcessor.replace_video_token(proc, {"video_grid_thw": torch.stack(grids)}, i)
        text = text.replace("<|video_pad|>", pads.replace("<|video_pad|>", "<|VP|>"), 1)
    text = text.replace("<|VP|>", "<|video_pad|>")
    assert ours == _tok(a, text)


def test_qwen3_vl_prompt_is_the_template(chunks):
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.video_utils import VideoMetadata

    a = tiny_adapter("tiny-qwen3-vl")
    ours = _engine_ids(a, chunks)
    grids = torch.stack([a.preprocess(c.frames)[1] for c in chunks])
    proc = types.SimpleNamespace(video_processor=types.SimpleNamespace(merge_size=a.merge_size, temporal_patch_size=2),
                                 vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>",
                                 video_token="<|video_pad|>")
    proc._calculate_timestamps = types.MethodType(Qwen3VLProcessor._calculate_timestamps, proc)
    fps = 2.0  # make_chunks: 2 frames per 1 s chunk
    meta = [VideoMetadata(total_num_frames=6, fps=fps, frames_indices=[2 * c.index, 2 * c.index + 1]) for c in chunks]
    text = _render(QWEN3_TEMPLATE, _conversation([{"type": "video"}, {"type": "video"}], [{"type": "video"}]))
    span = "<|vision_start|><|video_pad|><|vision_end|>"
    for i in range(len(chunks)):
        placeholder = Qwen3VLProcessor.replace_video_token(proc, {"video_grid_thw": grids, "video_metadata": meta}, i)
        # Qwen3-VL's placeholder carries its own vision start/end per temporal patch: it replaces the template's
        # whole span (as the original Qwen3VLProcessor did); replacing only the pad would nest start/end pairs.
        text = text.replace(span, placeholder.replace("<|video_pad|>", "<|VP|>"), 1)
    text = text.replace("<|VP|>", "<|video_pad|>")
    assert ours == _tok(a, text)


def test_llava_onevision_prompt_differs_only_as_documented(chunks):
    """Deliberate: each chunk's time marker is written before its video tokens (the template puts every video
    of a turn first, then the texts), and no newline follows a chunk's video tokens."""
    from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor

    a = tiny_adapter("tiny-llava-onevision")
    ours = _engine_ids(a, chunks)
    proc = types.SimpleNamespace(num_image_tokens=a.grid * a.grid, video_token="<video>")
    n = [LlavaOnevisionProcessor.replace_video_token(proc, {"pixel_values_videos": [c.frames]}, 0).count("<video>")
         for c in chunks]
    assert n == [a.vision_tokens(len(c.frames)) for c in chunks]  # HF's placeholder count per video
    text = _render(LLAVA_TEMPLATE, _conversation([{"type": "video"}, {"type": "video"}], [{"type": "video"}],
                                                 items=True))
    hf, expected = text, text
    for c, k in zip(chunks, n):
        hf = hf.replace("<video>\n", "<V>" * k + "\n", 1)  # the processor's expansion of each video
        expected = expected.replace("<video>\n", c.marker + "<V>" * k, 1)  # the documented difference
    hf, expected = hf.replace("<V>", "<video>"), expected.replace("<V>", "<video>")
    assert ours == _tok(a, expected)
    # measured: ours differs from HF's own ids by exactly the marker text and one newline per chunk
    ids_hf = _tok(a, hf)
    assert ids_hf != ours
    assert len(ours) - len(ids_hf) == sum(len(a.tokenize(c.marker)) for c in chunks) - len(chunks)


def test_smolvlm_prompt_differs_only_as_documented(chunks, monkeypatch):
    """SmolVLM's engine turn holds the stream and the question together (one user turn: video items, then
    the question text), as SmolVLM2's video prompts do. Deliberate differences, each substituted below:
    no "You are provided the following series of N frames from a H:MM:SS video." intro (a stream's length
    is unknown while it is watched); one "\\nTime=a-bs:" per chunk instead of one "\\nFrame from MM:SS:" per
    frame; no space after "User:" before the first chunk. Noticed, not deliberate: the kept answer is the
    stripped decoded text, so "Assistant:" is followed by the answer without the space the template writes."""
    from transformers.models.smolvlm import processing_smolvlm
    from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE, SmolVLMProcessor
    from transformers.video_utils import VideoMetadata

    assert SMOLVLM_TEMPLATE == DEFAULT_CHAT_TEMPLATE  # the text above is the one transformers uses for videos
    # num2words (an optional package, not installed) spells the frame count in the intro
    monkeypatch.setattr(processing_smolvlm, "num2words", lambda k: {2: "two", 4: "four"}[k])
    a = tiny_adapter("tiny-smolvlm")
    ours = _engine_ids(a, chunks)
    proc = types.SimpleNamespace(image_seq_len=a.image_seq_len, image_token=a.image_token,
                                 fake_image_token=a.fake_token, global_image_token=a.global_token)

    def hf_video(cs):  # SmolVLMProcessor's own expansion of one video item
        frames = np.concatenate([c.frames for c in cs])
        idx = [2 * c.index + j for c in cs for j in range(len(c.frames))]
        meta = VideoMetadata(total_num_frames=6, fps=2.0, frames_indices=idx, duration=3.0)
        return SmolVLMProcessor.replace_video_token(proc, {"pixel_values": frames[None], "video_metadata": [meta]}, 0)

    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": Q1}]},
                {"role": "assistant", "content": A1},
                {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": Q2}]}]
    hf = _render(SMOLVLM_TEMPLATE, messages)
    expected = hf
    frame = a.frame_text()
    for cs in (chunks[:2], chunks[2:]):
        video = hf_video(cs)
        assert video.startswith(f"You are provided the following series of {'four' if len(cs) == 2 else 'two'} "
                                f"frames from a 0:00:03 [H:MM:SS] video.\n\nFrame from 00:0{int(cs[0].start_s)}:")
        assert video.endswith(frame + "\n\n") and video.count("\nFrame from ") == 2 * len(cs)
        hf = hf.replace("<video>", video, 1)
        ours_stream = "".join(f"\n{c.marker}:" + frame * len(c.frames) for c in cs)
        expected = expected.replace("User: <video>", "User:" + ours_stream + "\n\n", 1)
    expected = expected.replace("Assistant: " + A1, "Assistant:" + A1, 1)
    assert ours == _tok(a, expected)
    ids_hf = _tok(a, hf)
    assert ids_hf != ours and len(ids_hf) > len(ours)  # measured in the report: HF's own sequence is longer
