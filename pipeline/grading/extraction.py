"""Find the final answer in a completion: the text after `</think>`, never the thinking.

Everything here is linear in the input, so a megabyte of text or ten thousand nested
braces costs milliseconds, not minutes: boxes are matched with one pass over the braces,
and the text fallbacks only look at the last `FALLBACK_TAIL_CHARS` of the answer.
"""

from __future__ import annotations

import re
from typing import Sequence

THINK_CLOSE = "</think>"
BOX_COMMANDS = ("\\boxed", "\\fbox")
FALLBACK_TAIL_CHARS = 4000

# Each pattern captures the answer in group 1; bounded repetition keeps them linear.
FALLBACK_PATTERNS: dict[str, re.Pattern[str]] = {
    "final_answer_is": re.compile(
        r"answer is[:\s]{0,8}\$?([^\n$]{1,300}?)\$?[ \t]{0,8}(?:\.[ \t\n]|\.?$)", re.IGNORECASE | re.MULTILINE
    ),
    "answer_colon": re.compile(
        r"^[ \t]{0,8}\**[ \t]{0,2}(?:final[ \t]+)?answer[ \t]{0,4}\**[ \t]{0,2}[:=][ \t]{0,8}\**[ \t]{0,2}\$?([^\n$]{1,300}?)\$?[ \t]{0,8}\.?[ \t]{0,8}$",
        re.IGNORECASE | re.MULTILINE,
    ),
}
DEFAULT_FALLBACKS = ("final_answer_is", "answer_colon")
_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"(?<!\\)[{}]")  # `\{` and `\}` are literal braces (sets, `\left\{`)


def answer_part(completion: str) -> str:
    """The text after the last `</think>`, or the whole completion when it has none."""
    index = completion.rfind(THINK_CLOSE)
    return completion if index < 0 else completion[index + len(THINK_CLOSE) :]


def _matching_braces(text: str) -> dict[int, int]:
    """Position of every `{` that is closed -> position of its `}` (one pass, no recursion)."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for match in _BRACE.finditer(text):
        if match.group() == "{":
            stack.append(match.start())
        elif stack:
            pairs[stack.pop()] = match.start()
    return pairs


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` / `\\fbox{...}`, braces counted at any depth."""
    starts = [match.end() - 1 for match in _BOX_START.finditer(text)]
    if not starts:
        return None
    pairs = _matching_braces(text)
    for open_at in reversed(starts):
        close_at = pairs.get(open_at)
        if close_at is not None:
            return text[open_at + 1 : close_at].strip()
    return None


def extract_answer(completion: str, fallbacks: Sequence[str] = DEFAULT_FALLBACKS) -> str | None:
    """The final answer: the last box in the answer part, else the last fallback phrase."""
    text = answer_part(completion)
    boxed = last_boxed(text)
    if boxed:
        return boxed
    tail = text[-FALLBACK_TAIL_CHARS:]
    for name in fallbacks:
        matches = FALLBACK_PATTERNS[name].findall(tail)
        answer = matches[-1].strip().strip("*").strip() if matches else ""  # markdown bold is not math
        if answer:
            return answer
    return None
