"""The official parsing and scoring rules on hand-made prediction sets.

Every expected figure below was worked out by hand from the official code's rules (StreamingBench
src/data/count.py, OVO-Bench utils/OVOBenchScore.py, streaming-vlm model_compete, ReKV
eval_open_ended.py), not by running the code under test; the comments show the arithmetic.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from eval import official, prompts
from eval.formats import load_ovobench, load_streamingbench
from eval.infjudge import judge_infstreams, load_runs
from eval.infstreams import official_previous_text, write_merged
from eval.ovobench import query_time
from eval.protocol import ingest_target
from eval.rescore import render, score_files
from eval.streamingbench import context_changes, sqa_contexts


def _write(p: Path, obj) -> str:
    p.write_text(json.dumps(obj))
    return str(p)


# ---- StreamingBench ---------------------------------------------------------------------------

@pytest.mark.parametrize("reply,answer,expected", [
    ("B", "B", True), ("B. red", "B", True),
    (" B", "B", False),  # no stripping: the first character is a blank
    ("", "B", None),  # empty: not counted
    ("The answer is (B)", "B", False), ("b", "B", False), ("A", "B", False)])
def test_streamingbench_first_character_rule(reply, answer, expected):
    assert official.sb_mcq_correct(reply, answer) is expected


@pytest.mark.parametrize("reply,fires", [("Yes,", True), ("yes", True), ("  YES.", True), ("Yesterday", True),
                                         ("no", False), ("", False), ("It is not time.", False)])
def test_streamingbench_proactive_fire_rule(reply, fires):
    assert official.sb_proactive_fires(reply) is fires


def _mcq(task, ts, answer, reply, key="M"):
    q = {"task_type": task, "question": "q?", "time_stamp": ts, "answer": answer,
         "options": ["A. a", "B. b", "C. c", "D. d"], "required_ability": "x"}
    if reply is not None:
        q[key] = reply
    return q


def test_streamingbench_rescoring_real_sqa_and_proactive_files(tmp_path):
    # real file: Counting 1/3 counted (the empty reply is not counted), Object Recognition 1/2
    real = [{"video_path": "v1.mp4", "questions": [
        _mcq("Counting", "00:00:10", "B", "B"), _mcq("Counting", "00:00:20", "B", " B"),
        _mcq("Counting", "00:00:30", "B", ""), _mcq("Counting", "00:00:40", "C", "c")]},
        {"video_path": "v2.mp4", "questions": [
            _mcq("Object Recognition", "00:00:05", "A", "A"),
            _mcq("Object Recognition", "00:00:09", "B", "The answer is (B)"),
            _mcq("Object Recognition", "00:00:11", "B", None)]}]  # never answered: absent from the stats
    s = score_files("streamingbench", [_write(tmp_path / "real.json", real)])
    assert s["model_key"] == "M"
    assert s["tasks"]["Counting"] == {"total": 3, "correct": 1, "accuracy": pytest.approx(100 / 3)}
    assert s["tasks"]["Object Recognition"]["accuracy"] == pytest.approx(50.0)
    assert s["totals"]["real"] == {"total": 5, "correct": 2, "accuracy": pytest.approx(40.0)}  # 2 of 5
    assert s["not_counted"] == 1 and s["official_crash_cases"] == 1
    assert "Counting: 33.33 (1/3)" in render(s)

    # sequential QA, list of lists: the empty reply is skipped; 1 of 2 counted correct
    sqa = [[{"video_path": "s.mp4", "questions": [_mcq("Sequential Question Answering", "00:00:10", "C", "C"),
                                                  _mcq("Sequential Question Answering", "00:00:20", "A", "")]}],
           [{"video_path": "t.mp4", "questions": [_mcq("Sequential Question Answering", "00:00:10", "D", "A")]}]]
    s = score_files("streamingbench", [_write(tmp_path / "sqa.json", sqa)])
    assert s["tasks"]["Sequential Question Answering"] == {"total": 2, "correct": 1, "accuracy": 50.0}
    assert s["totals"] == {} and s["official_crash_cases"] == 0

    # proactive, ground truth 00:00:29 output "3": fired at 27 (-2 s) with "3 points" -> time and answer;
    # at 31 (+2 s) with "Three" -> time only; at 32 (+3 s) -> neither; never fired (last poll 33) -> neither;
    # an empty history (the official script crashes) -> neither. time 2/5 = 40 %, answer 1/5 = 20 %.
    def pro(last_t, content):
        hist = [] if last_t is None else [{"role": "assistant", "content": "yes", "time": last_t - 1},
                                          {"role": "assistant", "content": content, "time": last_t}]
        return {"task_type": "Proactive Output", "question": "When ... output \"3\".", "time_stamp": "00:00:20",
                "ground_truth_time_stamp": "00:00:29", "ground_truth_output": "3",
                "M": {"answered": last_t or False, "dialog_history": hist}}
    data = [{"video_path": "p.mp4", "questions": [pro(27, "3 points"), pro(31, "Three"), pro(32, "3"),
                                                  pro(33, "no"), pro(None, "")]}]
    s = score_files("streamingbench", [_write(tmp_path / "pro.json", data)])
    assert s["tasks"]["Proactive Output"] == {"total": 5, "time_correct": 2, "answer_correct": 1,
                                              "time_accuracy": 40.0, "answer_accuracy": 20.0}
    assert s["official_crash_cases"] == 1


def test_streamingbench_loader_official_layouts_and_sqa_context(tmp_path):
    real = [{"time": "[0:00:00 - 0:00:10]", "video_path": "./videos/a.mp4", "video_categories": "x",
             "questions": [_mcq("Clips Summarize", "00:00:31", "C", None)]}]
    qs = load_streamingbench(_write(tmp_path / "questions_real.json", real))
    assert [(q.kind, q.group, q.part, q.time_s) for q in qs] == [("mcq", "real-time", "real", 31.0)]
    sqa_q = [{"task_type": "Sequential Question Answering", "question": "Who serves?", "time_stamp": "00:00:36",
              "answer": "A", "options": ["Wang.", "Fan.", "Xu.", "Ma."]},
             {"task_type": "Sequential Question Answering", "question": "Who wins?", "time_stamp": "00:01:10",
              "answer": "B", "options": ["A. p", "B. q", "C. r", "D. s"]}]
    sqa = [[{"video_path": "s.mp4", "questions": sqa_q[:1]}, {"video_path": "s.mp4", "questions": sqa_q[1:]}],
           [{"video_path": "t.mp4", "questions": [dict(sqa_q[0], time_stamp="00:00:05")]}]]
    qs = load_streamingbench(_write(tmp_path / "questions_sqa.json", sqa))
    assert [(q.kind, q.sqa_group) for q in qs] == [("sqa", 0), ("sqa", 0), ("sqa", 1)]
    ctx = sqa_contexts(qs)
    expected = ("Here are the contextual information related to the video. Please answer the questions based on "
                "the contextual information: At timestamp 00:00:36, the following question and answer occurred: "
                "Question: Who serves?; Options: A. Wang., B. Fan., C. Xu., D. Ma.; Answer: A; ")
    assert ctx[qs[0].qid] == "" and ctx[qs[1].qid] == expected and ctx[qs[2].qid] == ""  # one context per group
    prompt = prompts.sb_official_sqa(ctx[qs[1].qid], "Who wins?", qs[1].options)
    assert prompt.startswith("You are an advanced video question-answering AI assistant.")
    assert f"option.\n\n{expected}\n\nHere is the question." in prompt
    assert prompt.endswith("Options:\nA. p\nB. q\nC. r\nD. s\n\nThe best option is:")
    mcq = prompts.sb_official_mcq("What?", ["x", "y", "z", "w"])
    assert mcq.endswith("Question: What?\n\nOptions:\nA. x\nB. y\nC. z\nD. w\n\nThe best option is:")


def test_context_seconds_is_a_recent_window_without_long_term_memory():
    agent = SimpleNamespace(config=SimpleNamespace(sampler=SimpleNamespace(chunk_seconds=2.0)))
    assert context_changes(agent, 60, None) == {"memory.window_chunks": 30, "memory.long_term": False}
    assert context_changes(agent, 60, {"chunk_seconds": 1.0})["memory.window_chunks"] == 60
    assert context_changes(agent, None, None) == {}


# ---- OVO-Bench --------------------------------------------------------------------------------

@pytest.mark.parametrize("resp,score", [("B", 1), ("(B)", 1), ("The answer is B", 1), ("b", 0), (None, 0),
                                        (["B"], 1), (["B."], 0), ("", 0)])
def test_ovo_mcq_contains_rule(resp, score):
    assert official.ovo_mcq_score(resp, "B") == score


@pytest.mark.parametrize("resp,score", [("3", 1), ("3 times", 1), ("three times", 0), ("1, 2, 3", 0), ("13", 0),
                                        (None, 0), (["3"], 1)])
def test_ovo_rec_joins_all_digits(resp, score):
    assert official.ovo_rec_correct(resp, 3)[0] == score


@pytest.mark.parametrize("resp,type_,score", [("Yes", 1, 1), ("Yes,", 1, 1), ("yes", 1, 0), ("Y", 1, 1), ("y", 1, 0),
                                              ("No", 0, 1), ("N", 0, 1), ("no", 0, 0), ("Not sure", 0, 1),
                                              ("Yes", 0, 0), (None, 1, 0)])
def test_ovo_yes_no_rule(resp, type_, score):
    assert official.ovo_yes_no_score(resp, type_) == score


def test_ovo_rescoring_averages_tasks_then_categories(tmp_path):
    a = {"backward": [{"id": 0, "task": "EPM", "response": "B", "ground_truth": "B"},
                      {"id": 1, "task": "EPM", "response": "a", "ground_truth": "A"},
                      {"id": 2, "task": "HLD", "response": "Answer: C", "ground_truth": "C"}],
         "realtime": [{"id": 3, "task": "OCR", "response": None, "ground_truth": "A"},
                      {"id": 4, "task": "OCR", "response": "D", "ground_truth": "D"},
                      {"id": 5, "task": "OCR", "response": "D.", "ground_truth": "D"}],
         "forward": []}
    b = {"backward": [], "realtime": [], "forward": [
        {"id": 6, "task": "REC", "test_info": [{"realtime": 5, "count": 2, "response": "2"},
                                               {"realtime": 9, "count": 3, "response": "three times"}]},
        {"id": 7, "task": "SSR", "test_info": [{"realtime": 4, "type": 1, "response": "Yes,"},
                                               {"realtime": 6, "type": 1, "response": "yes"},
                                               {"realtime": 8, "type": 0, "response": "N"},
                                               {"realtime": 9, "type": 0, "response": "No."}]},
        {"id": 8, "task": "CRR", "test_info": [{"realtime": 3, "type": 0, "response": "Yes"}]}]}
    d = tmp_path / "results" / "M"
    d.mkdir(parents=True)
    _write(d / "M_EPM_HLD_OCR_offline.json", a)
    _write(d / "M_REC_SSR_CRR_offline.json", b)
    s = score_files("ovobench", [str(d)])
    # EPM 1/2 = 50, HLD 1/1 = 100 -> backward (0.5 + 1) / 2 = 75; OCR 2/3 -> realtime 66.67
    # REC 1/2 = 50, SSR 3/4 = 75, CRR 0/1 = 0 -> forward (0.5 + 0.75 + 0) / 3 = 41.67; overall 61.11
    assert {t: round(v["score"], 2) for t, v in s["tasks"].items()} == {
        "EPM": 50.0, "HLD": 100.0, "OCR": 66.67, "REC": 50.0, "SSR": 75.0, "CRR": 0.0}
    assert {c: round(v, 2) for c, v in s["categories"].items()} == {"backward": 75.0, "realtime": 66.67,
                                                                   "forward": 41.67}
    assert round(s["overall"], 2) == 61.11


def test_ovo_fractional_realtime_sees_up_to_the_next_whole_second(tmp_path):
    items = [{"id": 1, "task": "OCR", "video": "v.mp4", "realtime": 12.3, "question": "q", "options": ["a", "b"],
              "answer": "a", "gt": 0},
             {"id": 2, "task": "OCR", "video": "v.mp4", "realtime": 12, "question": "q", "options": ["a", "b"],
              "answer": "b", "gt": 1}]
    q1, q2 = load_ovobench(_write(tmp_path / "ovo.json", items))
    assert (query_time(q1), query_time(q2)) == (13.0, 12.0)  # ceil, as chunk_videos.py cuts the clip
    assert query_time(q1, "vstream") == 12.3 and ingest_target(query_time(q1), 1.0) == 13.0
    assert prompts.ovo_official_options(q1.options) == "A. a; B. b;"


# ---- RVS --------------------------------------------------------------------------------------

def test_rvs_literal_parse_truncated_score_and_yes_share(tmp_path):
    assert official.rvs_parse("{'pred': 'yes', 'score': 4.8}") == {"pred": "yes", "score": 4.8}
    assert official.rvs_parse("```{'pred': 'yes', 'score': 4}```") is None
    assert official.rvs_parse("") is None
    combined = {"v_0": [{"pred": "yes", "score": 4.8}, {"question": "q"}],  # int(4.8) = 4
                "v_1": [{"pred": "no", "score": 2}, {}],
                "v_2": [{"pred": "Yes", "score": 5}, {}],
                "v_3": [{"pred": "maybe", "score": 3}, {}],  # neither yes nor no: score counted only
                "average_score": 9.9, "accuracy": 0.1}
    s = score_files("rvs", [_write(tmp_path / "judged.json", combined)])
    assert s["average_score"] == pytest.approx(3.5)  # (4 + 2 + 5 + 3) / 4
    assert s["accuracy"] == pytest.approx(200 / 3)  # yes 2 of (2 yes + 1 no)
    assert (s["yes"], s["no"], s["judged"]) == (2, 1, 4)


# ---- Inf-Streams ------------------------------------------------------------------------------

@pytest.mark.parametrize("reply,vote", [("A", "A"), (" a.", "A"), ("B", "B"), ("", "B"), (None, "B"),
                                        ("Candidate A", "B")])
def test_infstreams_vote_rule(reply, vote):
    assert official.inf_vote(reply) == vote


def test_infstreams_window_text_and_coverage():
    s, e, ref = official.inf_window([[99.5, 101.0, "x"], [101, 103.7, "y"]])
    assert (s, e, ref) == (99, 103, "x\ny")
    items = [{"response": " a ", "end_time": 100.0}, {"text": "b", "end_time": 103.9},
             {"response": "c", "end_time": 104}, {"response": "d", "end_time": 99.9}]
    assert official.inf_text(items, s, e) == "a b"  # int(end_time) in (99, 103]
    assert official.inf_covers({"chunk_start": 99, "chunk_end": 103}, 99, 103)
    assert not official.inf_covers({"chunk_start": 100, "chunk_end": 200}, 99, 103)
    assert official.inf_votes("A", "B")["votes"] == {"A": 2, "B": 0}  # the B-A verdict is flipped back
    assert official.inf_votes("A", "A")["winner"] == "equal"


def test_infstreams_previous_text_stops_at_the_first_word_ending_after_start():
    words = [(0.0, 1.0, "one"), (1.0, 2.0, " two"), (2.5, 1.5, "odd"), (3.0, 9.0, "late"), (4.0, 4.5, "after")]
    assert official_previous_text(words, 5.0) == " one two odd"


class _Judge:
    """Prefers the candidate that mentions a goal; says something else when both are empty."""

    name = "fake"

    def __init__(self):
        self.stats = SimpleNamespace(not_a_letter=0)
        self.calls = []

    def vote_official(self, reference, a, b):
        self.calls.append((reference, a, b))
        return "A" if "goal" in a else "B"

    def describe(self):
        return {"judge": self.name}


def test_infstreams_interop_both_ways(tmp_path):
    # our per-chunk records -> merged.jsonl in merge_result.py's layout (basename keys, int bounds)
    recs = [{"video": "clips/g.mp4", "chunk_index": i, "items": [{"response": r, "start_time": 100 + i,
                                                                  "end_time": 101 + i}]}
            for i, r in enumerate(["what a goal", "", "wide", "quiet"])]
    write_merged(recs, tmp_path / "merged.jsonl")
    row = json.loads((tmp_path / "merged.jsonl").read_text())
    assert (row["video"], row["chunk_start"], row["chunk_end"], len(row["items"])) == ("g.mp4", 100, 104, 4)
    # the official side: a merged file of another model and a shard file (same chunk_start twice: the
    # longer one wins, as merge_result.py keeps it)
    other = tmp_path / "other_merged.jsonl"
    other.write_text(json.dumps({"video": "g.mp4", "chunk_start": 100, "chunk_end": 103, "items": [
        {"response": "a goal!", "start_time": 100, "end_time": 101}, {"response": "b", "start_time": 102,
                                                                      "end_time": 103}]}) + "\n")
    shards = tmp_path / "result_0.jsonl"
    shards.write_text(json.dumps({"video": "g.mp4", "chunk_start": 100, "chunk_end": 101, "items": []}) + "\n" +
                      json.dumps({"video": "g.mp4", "chunk_start": 100, "chunk_end": 103, "items": [
                          {"response": "x", "start_time": 100, "end_time": 101}]}) + "\n")
    assert load_runs(str(shards))["g.mp4"]["chunk_end"] == 103
    windows = tmp_path / "windows.jsonl"
    windows.write_text("\n".join(json.dumps(r) for r in [
        {"video": "clips/g.mp4", "title": "w0", "content": [[100.2, 101.0, "shot"], [101, 102, "saved"]]},
        {"video": "clips/g.mp4", "title": "w1", "content": [[102, 103.0, "corner"]]},
        {"video": "clips/g.mp4", "title": "w2", "content": [[103, 104.0, "late"]]}]) + "\n")  # other ends at 103
    judge = _Judge()
    s = judge_infstreams(str(tmp_path / "merged.jsonl"), str(windows), str(tmp_path / "out"), judge,
                         other=str(other), show_progress=False)
    # w0 [100, 102]: ours "what a goal" vs "a goal!": both mention a goal -> A in both orders -> A 1, B 1;
    # w1 [102, 103]: ours "wide" vs "b" -> B then (flipped) A -> A 1, B 1; w2 not covered by the other run
    assert judge.calls[0] == ("shot\nsaved", "what a goal", "a goal!")
    assert s["windows"] == 2 and s["windows_not_covered"] == 1
    assert s["official"]["global"] == {"A": 2, "B": 2, "win_rate_A": 0.5, "win_rate_B": 0.5}
    lines = [json.loads(x) for x in (tmp_path / "out" / "score_segments_0.jsonl").read_text().splitlines()]
    assert lines[0]["video"] == "g.mp4" and (lines[0]["start"], lines[0]["end"]) == (100, 102)
    assert lines[0]["judge"] == {"model": "fake", "vote_ab": "A", "vote_ba": "B"}
    # our judge output is read back by the rescoring (merge_score.py's rules), and an official one too
    assert score_files("infstreams", [str(tmp_path / "out" / "score_segments_0.jsonl")])["global"]["A"] == 2
    theirs = tmp_path / "score_segments_1.jsonl"
    theirs.write_text("\n".join(json.dumps({"video": "g.mp4", "start": s, "end": s + 1, "votes": v}) for s, v in [
        (0, {"A": 2, "B": 0}), (1, {"A": 0, "B": 2}), (1, {"A": 1, "B": 1}), (2, {"A": 1, "B": 1})]) + "\n")
    g = score_files("infstreams", [str(theirs)])["global"]  # (g, 1, 2) twice: the last is kept
    assert g == {"A": 4, "B": 2, "win_rate_A": 0.6667, "win_rate_B": 0.3333}


def test_cli_score_prints_and_writes_the_official_numbers(tmp_path, capsys):
    from vstream.cli.main import main

    d = tmp_path / "M"
    d.mkdir()
    _write(d / "r.json", {"backward": [{"id": 0, "task": "EPM", "response": "B", "ground_truth": "B"}],
                          "realtime": [{"id": 1, "task": "OCR", "response": "C", "ground_truth": "D"}],
                          "forward": [{"id": 2, "task": "CRR", "test_info": [{"realtime": 1, "type": 1,
                                                                               "response": "Yes"}]}]})
    assert main(["eval", "score", "ovobench", str(d), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "overall: 66.67" in out  # (100 + 0 + 100) / 3
    assert json.loads((tmp_path / "o" / "score.json").read_text())["categories"]["realtime"] == 0.0
