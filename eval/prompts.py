"""Prompt templates for the question-answering benchmarks (REFERENCE.md wording)."""
from __future__ import annotations

import re

_LETTERED = re.compile(r"^\s*([A-Z])\s*[.)．:]\s*")

MCQ_INSTRUCTION = "Answer with the letter of the correct option only."


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
    """ "Question: ... / options / The best option is:" """
    return "\n".join([MCQ_INSTRUCTION, f"Question: {question.strip()}", "Options:", *lettered_options(options),
                      "The best option is:"])


def rec_prompt(activity: str) -> str:
    """OVO-Bench REC: how many times the action has been performed so far."""
    return ("People in this video may repeat one kind of action. Count every complete repetition you have "
            f"seen so far.\nQuestion: How many times did they {activity.strip().rstrip('?.')}?\n"
            "Answer with a single number.")


def ssr_prompt(step: str) -> str:
    """OVO-Bench SSR: is this tutorial step being performed right now?"""
    return ("You are watching a tutorial made of a sequence of steps. One step is: "
            f"\"{step.strip()}\".\nIs the person performing this step right now, in the latest frames?\n"
            "Answer only with Yes or No.")


def crr_prompt(question: str) -> str:
    """OVO-Bench CRR: has the video shown enough to answer the question?"""
    return (f"Question about the video: {question.strip()}\nHas the video shown enough so far, especially in "
            "the latest frames, to answer this question? Answer only with Yes or No.")


def proactive_probe_text(question: str, gt_output: str) -> str:
    """StreamingBench proactive poll: is it time to output X?"""
    return f"{question.strip()} Is it time to output \"{gt_output.strip()}\" now?"


def history_text(question: str, answer: str) -> str:
    """An earlier question with its gold answer (StreamingBench sequential QA context)."""
    return f"Question: {question.strip()}\nAnswer: {answer.strip()}"
