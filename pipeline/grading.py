"""Extract the final answer from a completion and grade it with math-verify.

Three outcomes: `correct`, `incorrect`, `unparsed`. Only the answer part of a completion
(after `</think>`) is graded, so a `\\boxed{}` inside the thinking never counts. A gold
answer that math-verify cannot parse never grades as correct.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

CORRECT, INCORRECT, UNPARSED = "correct", "incorrect", "unparsed"
THINK_CLOSE = "</think>"
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_FALLBACKS = [
    re.compile(r"answer is[:\s]*\$?([^\n$]+?)\$?\s*(?:\.\s|\.?$)", re.IGNORECASE | re.MULTILINE),
    re.compile(r"^\s*answer\s*[:=]\s*\$?([^\n$]+?)\$?\s*\.?\s*$", re.IGNORECASE | re.MULTILINE),
]
_MAX_ANSWER_CHARS = 2000
_TIMEOUT_SECONDS = 5


def answer_part(completion: str) -> str:
    """The text after the last `</think>`, or the whole completion when it has none."""
    index = completion.rfind(THINK_CLOSE)
    return completion if index < 0 else completion[index + len(THINK_CLOSE) :]


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}`, counting braces at any depth."""
    best = None
    for command in _BOX_COMMANDS:
        start = text.rfind(command + "{")
        if start > (best[0] if best else -1):
            best = (start, command)
    if best is None:
        return None
    start, command = best
    depth, open_at = 0, start + len(command)
    for position in range(open_at, len(text)):
        char = text[position]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : position].strip()
    # Unbalanced: look for an earlier, complete box.
    return last_boxed(text[:start])


def extract_answer(completion: str) -> str | None:
    """The final answer: last box in the answer part, then `final answer is ...`, `Answer: ...`."""
    text = answer_part(completion)
    boxed = last_boxed(text)
    if boxed:
        return boxed
    for pattern in _FALLBACKS:
        matches = pattern.findall(text)
        if matches and matches[-1].strip():
            return matches[-1].strip()
    return None


@lru_cache(maxsize=65536)
def _parse(text: str) -> tuple:
    if len(text) > _MAX_ANSWER_CHARS:
        return ()
    try:
        parsed = parse(
            f"${text}$",
            extraction_config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
            parsing_timeout=_TIMEOUT_SECONDS,
        )
        if not parsed:
            parsed = parse(text, extraction_config=[ExprExtractionConfig()], parsing_timeout=_TIMEOUT_SECONDS)
    except Exception:  # math-verify raises on timeouts and odd input; both mean "unparsed"
        return ()
    # math-verify falls back to the raw string when no math was found: that is not a parse.
    if not parsed or isinstance(parsed[0], str):
        return ()
    return tuple(parsed)


def parse_gold(answer: str) -> tuple:
    """Parsed gold answer; empty when math-verify cannot read it.

    A gold column may hold a whole worked solution (NuminaMath): its last box is the answer.
    """
    text = str(answer).strip()
    return _parse(last_boxed(text) or text)


@dataclass(frozen=True)
class Grade:
    grade: str
    extracted: str | None

    @property
    def correct(self) -> bool:
        return self.grade == CORRECT


def grade_answer(gold: str, predicted: str | None) -> str:
    """Grade an already extracted answer against the gold answer."""
    gold_parsed = parse_gold(gold)
    if not gold_parsed or predicted is None:
        return UNPARSED
    predicted_parsed = _parse(predicted)
    if not predicted_parsed:
        return UNPARSED
    try:
        ok = verify(list(gold_parsed), list(predicted_parsed), timeout_seconds=_TIMEOUT_SECONDS)
    except Exception:
        return UNPARSED
    return CORRECT if ok else INCORRECT


def grade_completion(gold: str, completion: str) -> Grade:
    """Extract the answer from a completion's answer part and grade it."""
    extracted = extract_answer(completion)
    return Grade(grade_answer(gold, extracted), extracted)
