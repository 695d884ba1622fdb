"""Scoring rules and loaders of the eval harness on hand-made data with known scores."""
from __future__ import annotations

import json

import pytest

from eval import formats, scoring
from eval.judge import parse_ab, parse_rating
from eval.prompts import lettered_options, mcq_prompt, option_text
from eval.protocol import ingest_target


# ---- StreamingBench ------------------------------------------------------------------------------

@pytest.mark.parametrize("reply,answer,ok", [
    ("C", "C", True), ("C. a red car", "C", True), ("  C", "C", True), ("\nC)", "C", True),
    ("The answer is C", "C", False),  # first character is "T"
    ("c", "C", False), ("", "C", False), ("B", "C", False), ("C", "", False),
])
def test_streamingbench_first_letter_rule(reply, answer, ok):
    assert scoring.streamingbench_correct(reply, answer) is ok


def test_streamingbench_aggregate_counts_skipped_and_weights_groups_by_question():
    recs = ([{"task": "Counting", "group": "real-time", "correct": c} for c in (True, False, False, True)]
            + [{"task": "Object Perception", "group": "real-time", "correct": True}]
            + [{"task": "Proactive Output", "group": "contextual", "correct": False}]
            + [{"task": "Emotion Recognition", "group": "omni-source", "correct": None,
                "skip_reason": "needs audio"}] * 2)
    agg = scoring.streamingbench_aggregate(recs)
    assert agg["tasks"]["Counting"]["accuracy"] == pytest.approx(50.0)
    assert agg["tasks"]["Object Perception"]["accuracy"] == pytest.approx(100.0)
    assert agg["groups"]["real-time"]["accuracy"] == pytest.approx(60.0)  # 3/5, not the mean of tasks (75)
    assert agg["overall"] == pytest.approx(50.0)  # 3/6
    assert agg["n_scored"] == 6 and agg["n_skipped"] == 2
    assert agg["skipped_by_reason"] == {"needs audio": 2}
    assert "Emotion Recognition" not in agg["tasks"]


@pytest.mark.parametrize("fired,reply,ok", [
    (10.0, "FOUND", True), (12.0, "found it", True), (8.0, "FOUND!", True),  # ±2 s inclusive, case-insensitive
    (12.5, "FOUND", False), (7.9, "FOUND", False),  # outside the window
    (10.0, "nothing", False),  # fired in time, wrong output
    (None, "FOUND", False),  # never fired
])
def test_proactive_two_second_rule(fired, reply, ok):
    assert scoring.proactive_correct(fired, reply, 10.0, "FOUND") is ok


# ---- OVO-Bench -----------------------------------------------------------------------------------

@pytest.mark.parametrize("reply,count,ok", [
    ("3", 3, True), ("They did it 3 times.", 3, True), ("three", 3, True), ("Three times", 3, True),
    ("2.0", 2, True), ("4", 3, False), ("I counted 4, maybe 3", 3, False),  # the first number counts
    ("none", 0, False), ("zero", 0, True), ("", 1, False),
])
def test_rec_number_compare(reply, count, ok):
    assert scoring.rec_correct(reply, count) is ok


@pytest.mark.parametrize("reply,expected,ok", [
    ("Yes", True, True), ("yes.", True, True), ("  Yes, he is.", True, True), ("No", True, False),
    ("No.", False, True), ("no", False, True), ("Yes", False, False),
    ("Maybe", True, False), ("Maybe", False, False), ("", False, False), ("Nope", False, False),
])
def test_ssr_crr_yes_no(reply, expected, ok):
    assert scoring.yes_no_correct(reply, expected) is ok


def test_ovo_task_then_category_then_overall_averaging():
    def recs(task, cat, *cs):
        return [{"task": task, "category": cat, "correct": c} for c in cs]

    records = (recs("EPM", "backward", True, True, False, False)  # 50
               + recs("ASI", "backward", True)  # 100 -> backward 75
               + recs("OCR", "realtime", False, False)  # 0 -> realtime 0
               + recs("REC", "forward", True)  # 100
               + recs("SSR", "forward", True, False))  # 50 -> forward 75
    agg = scoring.ovo_aggregate(records)
    assert agg["tasks"]["EPM"]["accuracy"] == pytest.approx(50.0)
    assert agg["categories"] == pytest.approx({"backward": 75.0, "realtime": 0.0, "forward": 75.0})
    assert agg["overall"] == pytest.approx(50.0)
    # not the question-weighted mean (5/10 = 50 by chance here), so check a case where they differ
    agg2 = scoring.ovo_aggregate(recs("EPM", "backward", True, True, True) + recs("OCR", "realtime", False))
    assert agg2["overall"] == pytest.approx(50.0) and agg2["n"] == 4


# ---- Inf-Streams ---------------------------------------------------------------------------------

def test_swapped_order_win_rate():
    js = [
        {"video": "v1", "ours_first": "A", "ours_second": "B"},  # ours wins both orders: +2 ours
        {"video": "v1", "ours_first": "B", "ours_second": "A"},  # other wins both: +2 other
        {"video": "v2", "ours_first": "A", "ours_second": "A"},  # position bias: +1 ours, +1 other
        {"video": "v2", "ours_first": None, "ours_second": "B"},  # one invalid, +1 ours
    ]
    assert scoring.pairwise_votes("A", "A") == (1, 1, 0)
    assert scoring.pairwise_votes(None, "B") == (1, 0, 1)
    wr = scoring.win_rate(js)
    assert (wr["votes_ours"], wr["votes_other"], wr["invalid"], wr["windows"]) == (4, 3, 1, 4)
    assert wr["win_rate"] == pytest.approx(100 * 4 / 7)
    assert wr["per_video"]["v1"]["win_rate"] == pytest.approx(50.0)
    assert wr["per_video"]["v2"]["win_rate"] == pytest.approx(100 * 2 / 3)
    assert scoring.win_rate([{"video": "v", "ours_first": None, "ours_second": "x"}])["win_rate"] is None


def test_window_text_uses_end_time_in_half_open_interval():
    items = [{"response": "a", "start_time": 9, "end_time": 10}, {"response": "b", "start_time": 10, "end_time": 11},
             {"response": " ", "start_time": 11, "end_time": 12}, {"response": "c", "start_time": 19, "end_time": 20},
             {"response": "d", "start_time": 20, "end_time": 21}]
    assert scoring.window_text(items, 10, 20) == "b c"


def test_infstreams_metadata_rows_with_ws_after_we_do_not_crash(tmp_path):
    meta = tmp_path / "eval_all_metadata.jsonl"
    rows = [{"video": "game1.mp4", "content": [[0.0, 0.4, "hello"], [0.9, 0.5, "and"],  # ws > we
                                               [1.0, 1.3, "welcome"], [1000.5, 1000.2, "late"], [1001, 1002.5, "x"]]},
            {"video": "sub/game2.mp4", "content": []}]
    meta.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    vids = formats.load_infstreams_metadata(meta)
    assert vids[0].n_inverted == 2
    assert vids[0].end_time == pytest.approx(1002.5)
    assert vids[0].previous_text(1000.0) == "hello and welcome"
    assert vids[0].previous_text(1001.0) == "hello and welcome late"
    assert vids[0].source == str(tmp_path / "game1.mp4")
    assert vids[1].end_time == 0.0 and vids[1].previous_text(5) == ""
    win = tmp_path / "windows.jsonl"
    win.write_text(json.dumps({"video": "game1.mp4", "title": "t", "content": [[12.0, 11.0, "a"], [13, 15, "b"]],
                               "preasr": "x"}) + "\n")
    w = formats.load_infstreams_windows(win)[0]
    assert (w.start, w.end, w.reference_text) == (11.0, 15.0, "a b")


def test_commentary_items_reader_accepts_chunk_and_merged_lines(tmp_path):
    p = tmp_path / "mixed.jsonl"

    def item(text, t):
        return {"response": text, "start_time": t, "end_time": t + 1}

    lines = [{"video": "v", "chunk_start": 1, "chunk_end": 2, "items": [item("two", 1)]},
             {"video": "v", "chunk_start": 0, "chunk_end": 1, "items": [item("one", 0)]},
             {"video": "v", "items": [{"response": "one", "start_time": 0, "end_time": 1}]}]  # duplicate
    p.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"video": "v", "ite')  # partial last line
    items = formats.load_commentary_items(p)
    assert [it["response"] for it in items["v"]] == ["one", "two"]


# ---- loaders: clear errors -----------------------------------------------------------------------

def test_missing_file_and_missing_field_errors_are_one_line_and_named(tmp_path):
    with pytest.raises(formats.FormatError, match="benchmark file not found: .*nope.json"):
        formats.load_streamingbench(tmp_path / "nope.json")
    sb = tmp_path / "sb.json"
    sb.write_text(json.dumps([{"video_path": "a.mp4", "questions": [
        {"task_type": "Counting", "question": "q", "time_stamp": "00:00:05", "options": ["A. 1", "B. 2"]}]}]))
    with pytest.raises(formats.FormatError) as e:
        formats.load_streamingbench(sb)
    assert "missing field 'answer'" in str(e.value) and "questions[0]" in str(e.value) and "\n" not in str(e.value)
    meta = tmp_path / "m.jsonl"
    meta.write_text(json.dumps({"video": "a.mp4"}) + "\n")
    with pytest.raises(formats.FormatError, match=r"m.jsonl:1: missing field 'content'"):
        formats.load_infstreams_metadata(meta)
    with pytest.raises(formats.MissingVideoError, match=r"video file not found: .*a.mp4 \(and 1 more\)"):
        formats.check_videos([str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4"), "synthetic:seed=1"])
    with pytest.raises(formats.FormatError, match="bad time value"):
        formats.parse_time("yesterday")


@pytest.mark.parametrize("value,seconds", [("00:01:05", 65.0), ("1:02:03", 3723.0), ("02:30", 150.0),
                                           ("12.5", 12.5), (7, 7.0), ("00:00:01.5", 1.5)])
def test_parse_time(value, seconds):
    assert formats.parse_time(value) == pytest.approx(seconds)


def test_streamingbench_loader_kinds(tmp_path):
    sb = tmp_path / "sb.json"
    sb.write_text(json.dumps([{"video_path": "v.mp4", "questions": [
        {"task_type": "Counting", "question": "q1", "time_stamp": "00:00:05", "answer": "B",
         "options": ["A. 1", "B. 2"]},
        {"task_type": "Sequential Question Answering", "question": "q2", "time_stamp": 7, "answer": "A",
         "options": ["x", "y"]},
        {"task_type": "Proactive Output", "question": "say GO", "time_stamp": "00:00:03",
         "ground_truth_time_stamp": "00:00:09", "ground_truth_output": "GO"},
        {"task_type": "Source Discrimination", "question": "who spoke?", "time_stamp": "00:00:04", "answer": "A",
         "options": ["A. a", "B. b"]}]}]))
    qs = formats.load_streamingbench(sb)
    assert [q.kind for q in qs] == ["mcq", "sqa", "proactive", "omni"]
    assert [q.group for q in qs] == ["real-time", "contextual", "contextual", "omni-source"]
    assert qs[2].gt_time_s == 9.0 and qs[2].gt_output == "GO"


def test_ovobench_loader_expands_forward_probes(tmp_path):
    ovo = tmp_path / "ovo.json"
    ovo.write_text(json.dumps([
        {"id": 1, "task": "EPM", "video": "v.mp4", "realtime": 30, "question": "q", "options": ["a", "b", "c"],
         "answer": "c", "gt": 2},
        {"id": 2, "task": "REC", "video": "v.mp4", "activity": "jump", "test_info": [
            {"realtime": 5, "count": 1}, {"realtime": 9, "count": "2"}]},
        {"id": 3, "task": "SSR", "video": "v.mp4", "test_info": [{"realtime": 4, "step": "cut", "type": 1},
                                                                 {"realtime": 6, "step": "fry", "type": 0}]},
        {"id": 4, "task": "CRR", "video": "v.mp4", "question": "who?", "test_info": [{"realtime": 2, "type": "No"}]},
    ]))
    qs = formats.load_ovobench(ovo)
    assert [(q.qid, q.task, q.category, q.gold) for q in qs] == [
        ("1", "EPM", "backward", "C"), ("2#0", "REC", "forward", 1), ("2#1", "REC", "forward", 2),
        ("3#0", "SSR", "forward", True), ("3#1", "SSR", "forward", False), ("4#0", "CRR", "forward", False)]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"task": "XYZ", "video": "v.mp4"}]))
    with pytest.raises(formats.FormatError, match="unknown task 'XYZ'"):
        formats.load_ovobench(bad)


def test_rvs_aggregate():
    js = [{"pred": "yes", "score": 5}, {"pred": "no", "score": 1}, {"pred": "yes", "score": 3},
          {"pred": None, "score": None}]
    agg = scoring.rvs_aggregate(js)
    assert agg["accuracy"] == pytest.approx(100 * 2 / 3) and agg["mean_score"] == pytest.approx(3.0)
    assert agg["judged"] == 3 and agg["invalid"] == 1


# ---- judge reply parsing, prompts, timing ---------------------------------------------------------

@pytest.mark.parametrize("reply,out", [("A", "A"), (" B\n", "B"), ("A.", None), ("a", None), ("Answer: A", None),
                                       ("AB", None), ("", None)])
def test_pairwise_parsing_is_strict(reply, out):
    assert parse_ab(reply) == out


@pytest.mark.parametrize("reply,out", [
    ('{"pred": "yes", "score": 4}', {"pred": "yes", "score": 4}),
    ("Sure: {'pred': 'No', 'score': 1.0}", {"pred": "no", "score": 1}),
    ('{"pred": "maybe", "score": 3}', None), ('{"pred": "yes", "score": 7}', None), ("yes, 4", None),
])
def test_rating_parsing(reply, out):
    assert parse_rating(reply) == out


def test_prompts():
    p = mcq_prompt("What is it?", ["cat", "dog"])
    assert "Question: What is it?" in p and "A. cat\nB. dog" in p and p.endswith("The best option is:")
    assert lettered_options(["A. cat", "B) dog"]) == ["A. cat", "B) dog"]
    assert option_text(["x", "y"], "B") == "B. y"


def test_ingest_target_never_passes_the_question_time():
    assert ingest_target(12.0, 1.0) == 12.0
    assert ingest_target(12.7, 1.0) == 12.0
    assert ingest_target(5.0, 2.0) == 4.0
    assert ingest_target(0.3, 1.0) == 0.0
