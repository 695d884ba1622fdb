"""Every prompt the harness sends, per protocol: the official texts (protocol constants) and vstream's own.

The official constants are reproduced verbatim from the benchmarks' evaluation code; each names the
file it comes from (repository@commit:path). ``--protocol vstream`` uses the ``VS_*`` wording instead.
"""
from __future__ import annotations

import re

# ---- sources (the snapshots read) ---------------------------------------------------------------
SB_SRC = "THUNLP-MT/StreamingBench@8929923"
OVO_SRC = "JoeLeelyf/OVO-Bench@c34093f"
INF_SRC = "mit-han-lab/streaming-vlm@a940d8c"
RVS_SRC = "Becomebright/ReKV"

# ---- StreamingBench (official) ------------------------------------------------------------------
#: src/benchmark/StreamingBench.py PROMPT_TEMPLATE (then SB_MCQ_SUFFIX is appended)
SB_MCQ_TEMPLATE = (
    "You are an advanced video question-answering AI assistant. You have been provided with some frames from "
    "the video and a multiple-choice question related to the video. Your task is to carefully analyze the video "
    "and provide the best answer to question, choosing from the four options provided. Respond with only the "
    "letter (A, B, C, or D) of the correct option.\n\nQuestion: {}\n\nOptions:\n{}\n{}\n{}\n{}")
SB_MCQ_SUFFIX = "\n\nThe best option is:"  # src/benchmark/StreamingBench.py
#: src/benchmark/StreamingBench.py PROMPT_TEMPLATE_WITHOUT_OPTIONS (then SB_OPEN_SUFFIX)
SB_OPEN_TEMPLATE = (
    "You are an advanced video question-answering AI assistant. You have been provided with a video and a "
    "question related to the video. Your task is to carefully analyze the video and provide the answer to the "
    "question. \n\nQuestion: {}\n")
SB_OPEN_SUFFIX = "\n\nAnswer:"  # src/benchmark/StreamingBench.py
#: src/benchmark/StreamingBenchSQA.py PROMPT_TEMPLATE (context, question, four options)
SB_SQA_TEMPLATE = (
    "You are an advanced video question-answering AI assistant. You have been provided with a video and a "
    "multiple-choice question related to the video. Your task is to carefully analyze the video and the provided "
    "context to answer the question, choosing from the four options provided. Respond with only the letter (A, B, "
    "C, or D) of the correct option.\n\n{}\n\nHere is the question. Answer it and don't confuse it with the "
    "previous conversation.\nQuestion: {}\n\nOptions:\n{}\n{}\n{}\n{}\n\nThe best option is:")
#: src/benchmark/StreamingBenchSQA.py: the context opening, then one SB_SQA_CONTEXT_ITEM per earlier question
SB_SQA_CONTEXT_HEAD = ("Here are the contextual information related to the video. Please answer the questions "
                       "based on the contextual information: ")
SB_SQA_CONTEXT_ITEM = ("At timestamp {}, the following question and answer occurred: Question: {}; Options: {}, {}, "
                       "{}, {}; Answer: {}; ")
#: src/benchmark/StreamingBenchProactive.py PROMPT_TEMPLATE_PROACTIVE
SB_PROACTIVE_TEMPLATE = (
    "You are an advanced image question-answering AI assistant. You have been provided with images and a question "
    "related to the images. Your task is to carefully analyze the images and provide the answer to the question. "
    "You need to carefully confirm whether the images content meet the conditions of the question, and then output "
    "the correct content.\n\nQuestion: {}\n\nThe answer is:\n")
#: src/benchmark/StreamingBenchProactive.py: the polled query (question, ground-truth output)
SB_PROACTIVE_QUERY = "{} Is it the right time to output \"{}\"? You can only answer yes or no."

# ---- OVO-Bench (official, constant.py and utils/OVOBench.py) ------------------------------------
#: constant.py BR_PROMPT_TEMPLATE (question, options joined as in utils/OVOBench.py build_prompt)
OVO_BR_TEMPLATE = ("\nQuestion: {}\nOptions:\n{}\n\nRespond only with the letter corresponding to your chosen option "
                   "(e.g., A, B, C). \nDo not include any additional text or explanation in your response.\n")
#: constant.py REC_PROMPT_TEMPLATE
OVO_REC_TEMPLATE = (
    "\nYou're watching a video in which people may perform a certain type of action repetively. \nThe person "
    "performing this kind of action are referred to as 'they' in the following statement.\nYou're task is to count "
    "how many times have different people in the video perform this kind of action in total.\nOne complete motion "
    "counts as one. \nNow, answer the following question: {}\nProvide your answer as a single number (e.g., 0, 1, "
    "2, 3\u2026) indicating the total count.\nDo not include any additional text or explanation in your response.\n")
OVO_REC_QUESTION = "How many times did they {}?"  # utils/OVOBench.py build_prompt
#: constant.py SSR_PROMPT_TEMPLATE
OVO_SSR_TEMPLATE = (
    "\nYou're watching a tutorial video which contain a sequential of steps. \nThe following is one step from the "
    "whole procedures: \n{}\nYour task is to determine if the man or woman in the video is currently performing "
    "this step.\nAnswer only with \u201cYes\u201d or \u201cNo\u201d.\nDo not include any additional text or "
    "explanation in your response.\n")
#: constant.py CRR_PROMPT_TEMPLATE
OVO_CRR_TEMPLATE = (
    "\nYou're responsible of answering questions based on the video content. \nThe following question are relevant "
    "to the latest frames, i.e. the end of the video.\n{}\nDecide whether existing visual content, especially "
    "latest frames, i.e. frames that near the end of the video, provide enough information for answering the "
    "question.\nAnswer only with \u201cYes\u201d or \u201cNo\u201d.\nDo not include any additional text or "
    "explanation in your response.\n")

# ---- Inf-Streams (official, streaming_vlm/eval/model_compete/) -----------------------------------
#: generate.sh QUERY (the broadcaster instruction given to the commentating model)
INF_QUERY = (
    "Act as a live sports broadcaster: in short present-tense lines, call the on-screen play first, then one brief "
    "courtside insight; vary your energy with the moment and include visible score/time.\nStay perfectly synced to "
    "the video\u2014only describe what\u2019s visible, never invent names or facts (use positions/numbers if "
    "unknown), and immediately correct yourself if the scoreboard contradicts you.")
INF_TEMPERATURE = 0.9  # generate.sh TEMPERATURE_DEFAULT
#: judge.py SYS_PROMPT
INF_JUDGE_SYSTEM = (
    "\n    You are a strict A/B evaluator for sports video commentary.\n\n    Rules:\n    1) You MUST output exactly "
    "one uppercase letter: \u201cA\u201d or \u201cB\u201d.\n\n    2) Evaluate in this order:\n    \n    Broadcast "
    "tone & pacing: Vary the emotion; deliver live play-by-play or brief, in-the-moment analysis. Not just scene "
    "description. Use a real-time broadcast voice that puts the audience courtside.\n\n    Consistency & accuracy: "
    "Every detail must stay synchronized with the visuals and never contradict them.\n    ")
#: judge.py USER_TEMPLATE
INF_JUDGE_USER = ("Reference transcript (Provide a reference for the tone and on-screen information):\n{reference}\n\n"
                  "Candidate A:\n{A}\n\nCandidate B:\n{B}\n\n")
INF_JUDGE_MAX_CHARS = 8000  # judge.py: reference and candidates cut to 8000 characters after strip()

# ---- RVS (official, ReKV video_qa/eval/eval_open_ended.py, the Video-ChatGPT wording) ------------
RVS_JUDGE_SYSTEM = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for "
    "question-answer pairs. Your task is to compare the predicted answer with the correct answer and determine if "
    "they match meaningfully. Here's how you can accomplish the task:------##INSTRUCTIONS: - Focus on the meaningful "
    "match between the predicted answer and the correct answer.\n- Consider synonyms or paraphrases as valid "
    "matches.\n- Evaluate the correctness of the prediction compared to the answer.")
RVS_JUDGE_USER = (
    "Please evaluate the following video-based question-answer pair:\n\nQuestion: {question}\nCorrect Answer: "
    "{answer}\nPredicted Answer: {pred}\n\nProvide your evaluation only as a yes/no and score where the score is an "
    "integer value between 0 and 5, with 5 indicating the highest meaningful match. Please generate the response in "
    "the form of a Python dictionary string with keys 'pred' and 'score', where value of 'pred' is  a string of "
    "'yes' or 'no' and value of 'score' is in INTEGER, not STRING.DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR "
    "EXPLANATION. Only provide the Python dictionary string. For example, your response should look like this: "
    "{{'pred': 'yes', 'score': 4.8}}.")
RVS_JUDGE_MODEL = "gpt-3.5-turbo-0613"  # eval_open_ended.py GPTService
RVS_JUDGE_MAX_TOKENS = 300
RVS_ANSWER_TOKENS = 256  # video_qa/rekv_stream_vqa.py: max_new_tokens=256, newlines removed

# ---- vstream's own wording (--protocol vstream) -------------------------------------------------
_LETTERED = re.compile(r"^\s*([A-Z])\s*[.)．:]\s*")

VS_MCQ_INSTRUCTION = "Answer with the letter of the correct option only."


def lettered_options(options: list[str]) -> list[str]:
    """Options as "A. ...", "B. ..." (options already lettered are kept as they are)."""
    out = []
    for k, o in enumerate(options):
        o = str(o).strip()
        out.append(o if _LETTERED.match(o) else f"{chr(ord('A') + k)}. {o}")
    return out


def option_text(options: list[str], letter: str) -> str:
    """The option whose letter is ``letter`` ("A. ..." form), or the letter alone."""
    for o in lettered_options(options):
        m = _LETTERED.match(o)
        if m and m.group(1) == letter:
            return o
    return letter


def mcq_prompt(question: str, options: list[str]) -> str:
    """vstream: instruction / "Question: ..." / options / "The best option is:"."""
    return "\n".join([VS_MCQ_INSTRUCTION, f"Question: {question.strip()}", "Options:", *lettered_options(options),
                      "The best option is:"])


def rec_prompt(activity: str) -> str:
    """vstream OVO-Bench REC: how many times the action has been performed so far."""
    return ("People in this video may repeat one kind of action. Count every complete repetition you have "
            f"seen so far.\nQuestion: How many times did they {activity.strip().rstrip('?.')}?\n"
            "Answer with a single number.")


def ssr_prompt(step: str) -> str:
    """vstream OVO-Bench SSR: is this tutorial step being performed right now?"""
    return ("You are watching a tutorial made of a sequence of steps. One step is: "
            f"\"{step.strip()}\".\nIs the person performing this step right now, in the latest frames?\n"
            "Answer only with Yes or No.")


def crr_prompt(question: str) -> str:
    """vstream OVO-Bench CRR: has the video shown enough to answer the question?"""
    return (f"Question about the video: {question.strip()}\nHas the video shown enough so far, especially in "
            "the latest frames, to answer this question? Answer only with Yes or No.")


def proactive_probe_text(question: str, gt_output: str) -> str:
    """vstream StreamingBench proactive poll: is it time to output X?"""
    return f"{question.strip()} Is it time to output \"{gt_output.strip()}\" now?"


def history_text(question: str, answer: str) -> str:
    """vstream: an earlier question with its gold answer, put into memory (sequential QA)."""
    return f"Question: {question.strip()}\nAnswer: {answer.strip()}"


# ---- official prompt builders -------------------------------------------------------------------

def sb_official_options(options: list[str]) -> list[str]:
    """StreamingBench: options kept when the first starts with "A.", else the first four get "A. "... prefixes."""
    if options and str(options[0]).startswith("A."):
        return [str(o) for o in options]
    if len(options) < 4:
        raise ValueError(f"StreamingBench official prompt needs 4 options, got {len(options)}")
    return [f"{chr(ord('A') + k)}. {options[k]}" for k in range(4)]


def sb_official_mcq(question: str, options: list[str] | None) -> str:
    """StreamingBench.py: the MCQ prompt (the first four options), or the open prompt when there are none."""
    if not options:
        return SB_OPEN_TEMPLATE.format(question) + SB_OPEN_SUFFIX
    opts = sb_official_options(options)
    if len(opts) < 4:
        raise ValueError(f"StreamingBench official prompt needs 4 options, got {len(opts)}")
    return SB_MCQ_TEMPLATE.format(question, *opts[:4]) + SB_MCQ_SUFFIX


def sb_official_sqa(context: str, question: str, options: list[str]) -> str:
    """StreamingBenchSQA.py: the prompt with the context of the earlier questions."""
    opts = sb_official_options(options)
    return SB_SQA_TEMPLATE.format(context, question, *opts[:4])


def sb_official_sqa_context(context: str, time_stamp: str, question: str, options: list[str], answer: str) -> str:
    """StreamingBenchSQA.py: the context after one more question (gold answer included)."""
    opts = sb_official_options(options)
    head = context or SB_SQA_CONTEXT_HEAD
    return head + SB_SQA_CONTEXT_ITEM.format(time_stamp, question, *opts[:4], answer)


def ovo_official_options(options: list[str]) -> str:
    """utils/OVOBench.py build_prompt: "A. x; B. y; C. z;" on one line."""
    return "; ".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options)) + ";"
