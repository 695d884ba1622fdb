"""`vstream bench pipeline`: the rendered clip is what it claims (H.264 with B-frames, AAC), and the
end-to-end run reports deterministic counts (no timing is asserted)."""
from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    from vstream.bench.pipeline import render_clip

    return render_clip(tmp_path_factory.mktemp("bp") / "c.mp4", 160, 90, 3)


def test_render_clip_is_h264_with_b_frames_and_aac(small_clip):
    import av

    with av.open(str(small_clip)) as c:
        vs = c.streams.video[0]
        assert vs.codec_context.name == "h264" and (vs.width, vs.height) == (160, 90)
        assert c.streams.audio and c.streams.audio[0].codec_context.name == "aac"
        kinds = [f.pict_type for f in c.decode(vs)]
    assert len(kinds) == 90 and av.video.frame.PictureType.B in kinds


def test_render_clip_refuses_bad_sizes(tmp_path):
    from vstream.bench.pipeline import render_clip

    with pytest.raises(ValueError, match="even"):
        render_clip(tmp_path / "x.mp4", 161, 90, 1)
    with pytest.raises(ValueError, match="seconds"):
        render_clip(tmp_path / "x.mp4", 160, 90, 0)
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_ingest_over_decode_counts(small_clip):
    from vstream.bench.pipeline import ingest_over_decode

    r = ingest_over_decode(small_clip, model="tiny-smolvlm", fps=1.0, device="cpu", threads=1)
    for k in ("ingest_s", "decode_s", "ratio", "noref_s", "ratio_noref", "frames_decoded", "frames_converted",
              "frames_kept"):
        assert k in r
    assert r["frames_in"] == 90 and r["frames_kept"] == 3 == r["chunks"]
    assert 0 < r["frames_left_out"] == 90 - r["frames_decoded"]  # dropped non-reference pictures: not decoded
    assert r["noref_s"] > 0 and r["ratio_noref"] > 0
    assert r["frames_converted"] <= 1.2 * r["frames_kept"]
    assert set(r["stage_s"]) == {"decode", "convert", "preprocess", "model"}
    assert r["ratio"] > 0 and r["decode_s"] > 0


def test_bad_input_is_refused_before_loading(tmp_path, small_clip):
    from vstream.bench.pipeline import bench_pipeline, ingest_over_decode

    with pytest.raises(ValueError, match="does not exist"):
        ingest_over_decode(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="fps"):
        ingest_over_decode(small_clip, fps=0)
    with pytest.raises(ValueError, match="unknown size"):
        bench_pipeline(tmp_path, sizes=("4k",))
    with pytest.raises(ValueError, match="repeats"):
        bench_pipeline(tmp_path, repeats=0)


def test_the_pipeline_report_has_ops_against_w(tmp_path):
    """The whole command: a short 720p clip end to end, then ops per chunk outside the model against W, flat."""
    import json

    from vstream.cli.main import main

    rc = main(["bench", "pipeline", "--sizes", "720p", "--seconds", "2", "--repeats", "1", "--model", "tiny-smolvlm",
               "--ops-windows", "2,6", "--ops-layers", "2", "--threads", "1", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "pipeline.json").read_text())
    assert (tmp_path / "pipeline.png").stat().st_size > 0
    run = res["runs"][0]
    assert run["frames_in"] == 60 == run["frames_decoded"] + run["frames_left_out"] and run["frames_left_out"] > 0
    assert run["frames_kept"] == 2 and run["frames_converted"] <= 2
    rows = {r["window_chunks"]: r for r in res["ops"]["rows"]}
    assert set(rows) == {2, 6} and all(r["num_layers"] == 2 for r in rows.values())
    assert rows[6]["outside"] <= 1.1 * rows[2]["outside"]  # bookkeeping per chunk does not grow with W
    assert res["summary"]["ops"]["2_layers"]["outside_per_chunk"] == {"2": rows[2]["outside"], "6": rows[6]["outside"]}
