"""LLM judges: an OpenAI-compatible chat-completions client and an offline lexical judge.

Both expose ``pairwise(reference, a, b) -> "A" | "B" | None`` (Inf-Streams) and
``rate_answer(question, answer, prediction) -> {"pred", "score"} | None`` (RVS); None = invalid.
The API key is read from an environment variable and never logged nor written to results.
"""
from __future__ import annotations

import ast
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from eval import official, prompts

logger = logging.getLogger(__name__)

MAX_REFERENCE_CHARS = 8000

PAIRWISE_SYSTEM = (
    "You are an expert judge of live sports and event commentary. You compare two candidate commentaries "
    "written for the same stretch of a video.")
PAIRWISE_USER = (
    "Reference transcript of what the human commentator said over this stretch (it also tells you what "
    "happened on screen):\n<reference>\n{reference}\n</reference>\n\n"
    "Candidate A:\n<A>\n{a}\n</A>\n\nCandidate B:\n<B>\n{b}\n</B>\n\n"
    "Which candidate is the better live commentary? Judge first the broadcast tone and pacing (does it sound "
    "like a live commentator speaking at the right moments), then the consistency with what happened in the "
    "video as the reference shows it. Reply with exactly one letter: A or B.")
RATE_SYSTEM = (
    "You evaluate answers to questions about videos. Compare the predicted answer with the correct answer "
    "and judge whether the prediction is meaningfully correct; synonyms and paraphrases count as correct.")
RATE_USER = (
    "Question: {question}\nCorrect answer: {answer}\nPredicted answer: {prediction}\n\n"
    "Reply only with a JSON object {{\"pred\": \"yes\" or \"no\", \"score\": an integer from 0 to 5}} where "
    "pred says whether the prediction matches the correct answer and score rates how well it matches "
    "(5 = perfectly). No other text.")


def parse_ab(reply: str) -> str | None:
    """Strict pairwise parsing: the reply must be exactly "A" or "B" (surrounding blanks allowed)."""
    s = reply.strip()
    return s if s in ("A", "B") else None


def parse_rating(reply: str) -> dict[str, Any] | None:
    """Parse ``{"pred": "yes"|"no", "score": 0..5}`` (JSON or a Python dict literal) from a reply."""
    m = re.search(r"\{.*?\}", reply, re.S)
    if not m:
        return None
    obj: Any = None
    for loader in (json.loads, ast.literal_eval):
        try:
            obj = loader(m.group(0))
            break
        except (ValueError, SyntaxError, TypeError):
            continue
    if not isinstance(obj, dict):
        return None
    pred = str(obj.get("pred", "")).strip().lower()
    score = obj.get("score")
    if pred not in ("yes", "no") or isinstance(score, bool):
        return None
    try:
        score = float(score)
    except (TypeError, ValueError):
        return None
    if not 0 <= score <= 5:
        return None
    return {"pred": pred, "score": int(score) if score.is_integer() else score}


class JudgeStats:
    """Counters a judge keeps (written into summaries)."""

    def __init__(self) -> None:
        self.requests = 0
        self.http_retries = 0
        self.invalid_retries = 0
        self.invalid = 0
        self.not_a_letter = 0  # official Inf-Streams replies not starting with A or B (they count as "B")

    def to_dict(self) -> dict[str, int]:
        return dict(requests=self.requests, http_retries=self.http_retries, invalid_retries=self.invalid_retries,
                    invalid=self.invalid, not_a_letter=self.not_a_letter)


class _JudgeBase:
    name = "judge"

    def __init__(self, invalid_retries: int = 2) -> None:
        self.stats = JudgeStats()
        self.invalid_retries = invalid_retries

    def _complete(self, system: str, user: str, max_tokens: int | None = -1) -> str:
        raise NotImplementedError

    def _ask_parsed(self, system: str, user: str, parse: Callable[[str], Any], max_tokens: int | None = -1) -> Any:
        """Ask, parse strictly; an unparsable reply is retried ``invalid_retries`` times, then None."""
        for attempt in range(self.invalid_retries + 1):
            reply = self._complete(system, user, max_tokens)
            value = parse(reply)
            if value is not None:
                return value
            logger.debug("judge reply not valid (attempt %d): %r", attempt + 1, reply[:80])
            if attempt < self.invalid_retries:
                self.stats.invalid_retries += 1
        self.stats.invalid += 1
        return None

    def pairwise(self, reference: str, a: str, b: str) -> str | None:
        """"A" or "B": the better live commentary given the reference transcript; None when invalid."""
        user = PAIRWISE_USER.format(reference=reference[:MAX_REFERENCE_CHARS] or "(empty)",
                                    a=a[:MAX_REFERENCE_CHARS] or "(no commentary)",
                                    b=b[:MAX_REFERENCE_CHARS] or "(no commentary)")
        return self._ask_parsed(PAIRWISE_SYSTEM, user, parse_ab)

    def rate_answer(self, question: str, answer: str, prediction: str) -> dict[str, Any] | None:
        """``{"pred": "yes"|"no", "score": 0..5}`` for an open-ended answer; None when invalid."""
        user = RATE_USER.format(question=question, answer=answer, prediction=prediction or "(empty)")
        return self._ask_parsed(RATE_SYSTEM, user, parse_rating)

    def vote_official(self, reference: str, a: str, b: str) -> str:
        """Inf-Streams judge.py: its prompts, inputs stripped and cut to 8000 characters, "A" when the reply
        starts with "A" else "B" (replies starting with neither are counted in ``not_a_letter``)."""
        n = prompts.INF_JUDGE_MAX_CHARS
        user = prompts.INF_JUDGE_USER.format(reference=reference.strip()[:n], A=a.strip()[:n], B=b.strip()[:n])
        reply = self._complete(prompts.INF_JUDGE_SYSTEM, user, None)
        if not str(reply or "").strip().upper()[:1] in ("A", "B"):
            self.stats.not_a_letter += 1
        return official.inf_vote(reply)

    def rate_official(self, question: str, answer: str, prediction: str) -> dict[str, Any] | None:
        """RVS eval_open_ended.py: its prompts, the reply read with ast.literal_eval; an unreadable reply is
        asked again (the official loop has no bound; here ``invalid_retries`` more times), then None."""
        user = prompts.RVS_JUDGE_USER.format(question=question, answer=answer, pred=prediction)
        return self._ask_parsed(prompts.RVS_JUDGE_SYSTEM, user, official.rvs_parse, prompts.RVS_JUDGE_MAX_TOKENS)

    def describe(self) -> dict[str, Any]:
        return {"judge": self.name, **self.stats.to_dict()}


class ChatJudge(_JudgeBase):
    """Judge through an OpenAI-compatible ``/chat/completions`` endpoint (temperature 0).

    url: the API base (".../v1") or the full ".../chat/completions" address. The key comes from the
    environment variable ``api_key_env`` (no key: no Authorization header, for local servers).
    HTTP 5xx / 429 / network errors are retried with exponential back-off; other HTTP errors raise.
    """

    def __init__(self, url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 60.0,
                 max_retries: int = 4, backoff_s: float = 1.0, invalid_retries: int = 2,
                 max_tokens: int = 64) -> None:
        super().__init__(invalid_retries)
        if not url or not url.startswith(("http://", "https://")):
            raise ValueError(f"judge url must start with http:// or https://, got {url!r}; pass --judge-url")
        if not model:
            raise ValueError("judge model is empty; pass --judge-model NAME")
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self.name = f"chat:{model}"
        self.api_key_env = api_key_env
        self._key = os.environ.get(api_key_env, "")
        if not self._key:
            logger.info("no API key in $%s; calling the judge without authorization", api_key_env)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_tokens = max_tokens

    def __repr__(self) -> str:  # never show the key
        return f"ChatJudge(endpoint={self.endpoint!r}, model={self.model!r}, key_env={self.api_key_env!r})"

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _complete(self, system: str, user: str, max_tokens: int | None = -1) -> str:
        """One chat completion at temperature 0; ``max_tokens`` -1 = the judge's own, None = not sent."""
        req_body: dict[str, Any] = {"model": self.model, "temperature": 0,
                                    "messages": [{"role": "system", "content": system},
                                                 {"role": "user", "content": user}]}
        mt = self.max_tokens if max_tokens == -1 else max_tokens
        if mt is not None:
            req_body["max_tokens"] = mt
        body = json.dumps(req_body).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.http_retries += 1
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self.stats.requests += 1
            req = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    payload = resp.read()
            except urllib.error.HTTPError as e:
                detail = self._redact(e.read(300).decode("utf-8", "replace")) if e.fp else ""
                if e.code >= 500 or e.code == 429:
                    last = f"HTTP {e.code}"
                    logger.warning("judge returned HTTP %d (attempt %d/%d); retrying", e.code, attempt + 1,
                                   self.max_retries + 1)
                    continue
                raise RuntimeError(f"judge request failed with HTTP {e.code}: {detail.strip()[:200]} "
                                   f"(check --judge-url, --judge-model and ${self.api_key_env})") from None
            except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as e:
                reason = getattr(e, "reason", e)
                last = self._redact(str(reason))
                logger.warning("judge unreachable (%s, attempt %d/%d); retrying", last, attempt + 1,
                               self.max_retries + 1)
                continue
            try:
                data = json.loads(payload)
                content = data["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                logger.debug("judge reply is not a chat completion: %r", payload[:120])
                return ""
            return content if isinstance(content, str) else ""
        raise RuntimeError(f"judge at {self.endpoint} failed after {self.max_retries + 1} attempts ({last}); "
                           "check the server, then rerun with --resume")


_WORD = re.compile(r"[a-z0-9]+")


def _f1(a: str, b: str) -> float:
    ta, tb = _WORD.findall(a.lower()), _WORD.findall(b.lower())
    if not ta or not tb:
        return 0.0
    common: dict[str, int] = {}
    for t in ta:
        common[t] = common.get(t, 0) + 1
    hit = 0
    for t in tb:
        if common.get(t, 0) > 0:
            common[t] -= 1
            hit += 1
    if not hit:
        return 0.0
    p, r = hit / len(tb), hit / len(ta)
    return 2 * p * r / (p + r)


class LexicalJudge(_JudgeBase):
    """Offline judge by word overlap (F1) with the reference: for runs without an LLM endpoint
    (synthetic benchmark, smoke tests). Its numbers are not comparable with published LLM-judged ones."""

    name = "lexical-overlap"

    def pairwise(self, reference: str, a: str, b: str) -> str | None:
        self.stats.requests += 1
        fa, fb = _f1(reference[:MAX_REFERENCE_CHARS], a), _f1(reference[:MAX_REFERENCE_CHARS], b)
        return "A" if fa >= fb else "B"  # ties go to A; judging both orders cancels the bias

    def rate_answer(self, question: str, answer: str, prediction: str) -> dict[str, Any] | None:
        self.stats.requests += 1
        f = _f1(answer, prediction)
        return {"pred": "yes" if f >= 0.5 else "no", "score": int(round(5 * f))}

    def vote_official(self, reference: str, a: str, b: str) -> str:
        return self.pairwise(reference, a, b) or "B"

    def rate_official(self, question: str, answer: str, prediction: str) -> dict[str, Any] | None:
        return self.rate_answer(question, answer, prediction)


def make_judge(url: str | None, model: str | None, api_key_env: str = "OPENAI_API_KEY",
               **kw: Any) -> _JudgeBase:
    """ChatJudge when a url is given, else the offline LexicalJudge."""
    if url:
        return ChatJudge(url, model or "", api_key_env=api_key_env, **kw)
    logger.warning("no --judge-url: using the offline lexical-overlap judge (not comparable with LLM judges)")
    return LexicalJudge()
