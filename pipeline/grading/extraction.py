"""Find the final answer in a text: the answer part of a completion (after `</think>`), or a gold
answer that is written as a sentence or a worked solution.

The rules, in order (the first that finds something wins; each later rule is a named fallback):

1. `\\boxed{}` / `\\fbox{}`: the last complete box, together with the boxes just before it that
   are joined to it only by separators (`,`, `and`, `or`, `\\text{ and }`, `$`, `x =`), so
   `\\boxed{1}, \\boxed{2}` is the set `1, 2`. A box that was opened but never closed (a cut
   answer) and no complete box before it: no answer, never a guess from the text.
2. `final_answer_is`, `answer_colon`, `hashes`: answer phrases ("the answer is 4", "Final
   answer: 42", Minerva's "The final answer is $X$. I hope it is correct.", GSM8K's `#### 72`).
3. `last_latex`: the last delimited math (`$..$`, `$$..$$`, `\\(..\\)`, `\\[..\\]`) with the spans
   joined to it by separators, and a percent word after it (math-verify's last-LaTeX rule).
4. `last_line`: a last line that is only math (no prose words, no delimiters).
5. `last_number`: the last number in plain text (thousands separators, currency and units
   around it, a percent word after it), never a number inside math that rule 3 could not read
   (math-verify's last-number rule, without its expression evaluation).
6. `single_word`: a text that is one word (`Evelyn`) is that word, compared as text.

Everything here is string work, linear or bounded: boxes are matched with one pass over the
braces, and the text rules only look at the last `FALLBACK_TAIL_CHARS` of the text.
"""

from __future__ import annotations

import re
from typing import Sequence

THINK_CLOSE = "</think>"
FALLBACK_TAIL_CHARS = 4000
MAX_SPAN_CHARS = 1000

# Each pattern captures the answer in group 1; bounded repetition keeps them linear.
FALLBACK_PATTERNS: dict[str, re.Pattern[str]] = {
    "final_answer_is": re.compile(
        r"(?:answer|result) is[:\s]{0,8}\$?([^\n$]{1,300}?)\$?[ \t]{0,8}(?:\.[ \t\n]|\.?$)", re.IGNORECASE | re.MULTILINE
    ),
    "answer_colon": re.compile(
        r"^[ \t]{0,8}\**[ \t]{0,2}(?:final[ \t]+)?answer[ \t]{0,4}\**[ \t]{0,2}[:=][ \t]{0,8}\**[ \t]{0,2}\$?([^\n$]{1,300}?)\$?[ \t]{0,8}\.?[ \t]{0,8}$",
        re.IGNORECASE | re.MULTILINE,
    ),
    "hashes": re.compile(r"^[ \t]{0,8}####[ \t]{0,8}([^\n]{1,300}?)[ \t]{0,8}$", re.MULTILINE),
}
TEXT_RULES = ("last_line", "last_latex", "last_number", "single_word")
# For completions; a one-word answer part ("Hmm.") is no answer. Gold and bare answers add `single_word`.
DEFAULT_FALLBACKS = ("final_answer_is", "answer_colon", "hashes", "last_line", "last_latex", "last_number")
FALLBACK_NAMES = (*FALLBACK_PATTERNS, *TEXT_RULES)

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"(?<!\\)[{}]")  # `\{` and `\}` are literal braces (sets, `\left\{`)
# What may stand between two boxes (or two math spans) that form one answer.
_JOINER = re.compile(
    r"(?:\s|\$|\\[()\[\]]|[,;]|\\[,;: ]|\\q?quad|(?:[A-Za-z]+\s+){0,2}(?:and|or)\b"
    r"|\\text\{[^{}]{0,30}?(?:\band|\bor|,)?\s*\}|[A-Za-z](?:_\{?\w+\}?)?\s*=)*",
    re.IGNORECASE,
)
# Minerva's ending, which math-verify ranks with boxes (the later of the two wins).
_MINERVA = re.compile(r"final answer is[:\s]{0,8}(.{1,300}?)\.?\s{0,4}I hope", re.IGNORECASE | re.DOTALL)
_MAX_JOINER_CHARS = 40
_SPAN = re.compile(
    r"(?<!\\)\$\$(?P<display>(?:[^$]|\$(?!\$)){1,%d}?)(?<!\\)\$\$"
    r"|(?<!\\)\\\[(?P<bracket>(?:[^\\]|\\(?!\])){1,%d}?)\\\]"
    r"|(?<![\\\d$])\$(?P<inline>(?:\\\$|[^\n$]){1,%d}?)(?<!\\)\$"
    r"|(?<!\\)\\\((?P<paren>(?:[^\\\n]|\\(?!\))){1,%d}?)\\\)" % ((MAX_SPAN_CHARS,) * 4),
    re.DOTALL,
)
_PERCENT_AFTER = re.compile(r"\s{0,3}(?:\\?%|percent(?:age)?\b|pct\b)", re.IGNORECASE)
_DELIMITERS = re.compile(r"\$|\\[()\[\]]")
# A plain-text number: optional sign, digit groups (thousands by `,` or spaces) or a decimal comma.
_NUMBER = re.compile(
    r"(?<![\w.])[-−]?(?:\d{1,3}(?:(?:,|[ \u00a0\u2009\u202f])\d{3})+(?:\.\d+)?|\d+/\d+|\d+(?:[.,]\d+)?|\.\d+)(?![\d])"
)
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_WORD_PAIR = re.compile(r"(?<![\\A-Za-z])([A-Za-z]{2,})[ \t]+(?=([A-Za-z]{2,})(?![A-Za-z]))")
# `\text{...}`, `\mathrm{...}`, `\begin{pmatrix}`: a command's word argument is not prose.
_TEXT_GROUP = re.compile(r"\\[A-Za-z]+\s*\{[^{}]*\}")
_MATH_WORDS = frozenset(
    "and or sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln exp sqrt min max gcd lcm mod "
    "det deg pct percent percentage infty inf pi cdot frac dfrac tfrac binom choose ncr".split()
)


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


def _boxes(text: str) -> list[tuple[int, int]]:
    """(content start, content end) of every complete box that is not inside another box."""
    starts = [match.end() - 1 for match in _BOX_START.finditer(text)]
    if not starts:
        return []
    pairs = _matching_braces(text)
    boxes: list[tuple[int, int]] = []
    for open_at in starts:
        close_at = pairs.get(open_at)
        if close_at is None or (boxes and open_at < boxes[-1][1]):
            continue
        boxes.append((open_at + 1, close_at))
    return boxes


def has_box(text: str) -> bool:
    """Whether the text opens a `\\boxed{`/`\\fbox{` (complete or not)."""
    return _BOX_START.search(text) is not None


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


def _joined(text: str, spans: list[tuple[int, int]], outer: list[tuple[int, int]]) -> list[str]:
    """The contents of the last span and of the spans before it joined to it by separators only.

    `outer[i]` is span i with its delimiters (where the gap to the next span is measured)."""
    chosen = [len(spans) - 1]
    for index in range(len(spans) - 2, -1, -1):
        gap = text[outer[index][1] : outer[index + 1][0]]
        if len(gap) > _MAX_JOINER_CHARS or _JOINER.fullmatch(gap) is None:
            break
        chosen.append(index)
    # A dict keeps the first of equal contents in order in linear time (`content not in list` was
    # quadratic: 40,000 distinct joined boxes took 15 s).
    contents = dict.fromkeys(text[spans[index][0] : spans[index][1]].strip() for index in reversed(chosen))
    return [content for content in contents if content]


def final_boxes(text: str, all_boxes: bool = False) -> str | None:
    """Rule 1: the last box and the boxes joined to it (or every box, for a gold answer), as one
    comma-separated answer."""
    boxes = _boxes(text)
    if not boxes:
        return None
    if all_boxes:
        contents = list(dict.fromkeys(text[start:end].strip() for start, end in boxes))
    else:
        outer = [(text.rfind("\\", 0, start), end + 1) for start, end in boxes]
        contents = _joined(text, boxes, outer)
    inner = [last_boxed(content) or content for content in contents]  # \boxed{\boxed{3}}
    return ", ".join(part for part in inner if part) or None


def is_prose(text: str) -> bool:
    """True when the text has a word of 3+ letters outside LaTeX commands and `\\text{}` groups
    that is not a math word (`sin`, `and`, `percent`...): a sentence, not an expression."""
    bare = _TEXT_GROUP.sub(" ", text)
    if any(word.group().lower() not in _MATH_WORDS for word in _WORD.finditer(bare)):
        return True
    return any(  # two short words in a row ("It is 2"): a sentence too
        pair.group(1).lower() not in _MATH_WORDS and pair.group(2).lower() not in _MATH_WORDS
        for pair in _WORD_PAIR.finditer(bare)
    )


def _clean(candidate: str) -> str:
    """Strip markdown bold, a full stop, stray braces and outer math delimiters off a phrase capture."""
    text = candidate.strip().strip("*").strip()
    for _ in range(3):
        before = text
        text = text.rstrip(".").strip()
        for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if text.startswith(opener) and text.endswith(closer) and len(text) >= len(opener) + len(closer):
                text = text[len(opener) : len(text) - len(closer)].strip()
        if text == before:
            break
    return text


def _last_latex_at(text: str) -> tuple[str, int] | None:
    matches = list(_SPAN.finditer(text))
    if not matches:
        return None
    spans = [(m.start(m.lastgroup), m.end(m.lastgroup)) for m in matches]
    outer = [(m.start(), m.end()) for m in matches]
    contents = [c for c in _joined(text, spans, outer) if c]
    if not contents:
        return None
    answer = ", ".join(contents)
    if _PERCENT_AFTER.match(text, matches[-1].end()) and not answer.rstrip().endswith("%"):
        answer += "\\%"
    return answer, matches[-1].end()


def last_latex(text: str) -> str | None:
    """Rule 5a: the last delimited math span, joined spans before it, and a percent word after it."""
    found = _last_latex_at(text)
    return found[0] if found else None


def _inside_broken_math(text: str, position: int) -> bool:
    """Whether `position` lies between math delimiters that rule 3 could not read (`$ \\n 9 \\n $`).

    A lone `$` with no partner after the number is a currency sign (`$1,000.99`), not math."""
    before = text[:position].replace("\\$", "").replace("$$", "")
    after = text[position:].replace("\\$", "").replace("$$", "")
    singles = sum(1 for i, char in enumerate(before) if char == "$" and not (i and before[i - 1].isdigit()))
    if singles % 2 == 1 and "$" in after:
        return True
    return (before.rfind("\\(") > before.rfind("\\)") and "\\)" in after) or (
        before.rfind("\\[") > before.rfind("\\]") and "\\]" in after
    )


def plain_number(token: str) -> str:
    """A plain-text number as LaTeX: thousands separators dropped, a decimal comma made a point.

    `1,000.5` / `1 000` -> thousands; `0,111`, `2,74` and `1000,99` (a leading zero, or two
    digits after a single comma) -> decimal comma; `3,4` stays a list."""
    token = token.replace("−", "-").strip()
    if re.fullmatch(r"-?(?:0,\d+|\d+,\d{2})", token):
        return token.replace(",", ".")
    if re.fullmatch(r"-?\d{1,3}(?:(?:,|[ \u00a0\u2009\u202f])\d{3})+(?:\.\d+)?", token):
        return re.sub(r"[, \u00a0\u2009\u202f]", "", token)
    return token


def _last_number_at(text: str) -> tuple[str, int] | None:
    spans = [m.span() for m in _SPAN.finditer(text)]
    for match in reversed(list(_NUMBER.finditer(text))):
        if any(start <= match.start() < end for start, end in spans):
            continue  # a number inside math belongs to rule 5a
        if _inside_broken_math(text, match.start()):
            return None
        number = plain_number(match.group())
        percent = _PERCENT_AFTER.match(text, match.end())
        return (number + "\\%", percent.end()) if percent else (number, match.end())
    return None


def last_number(text: str) -> str | None:
    """Rule 5b: the last number (or `a/b`) in plain text, with a percent word after it."""
    found = _last_number_at(text)
    return found[0] if found else None


def last_math(text: str, fallbacks: Sequence[str] = ("last_latex", "last_number")) -> str | None:
    """Rule 5: the later of the last math span and the last plain number (math-verify's plain rule:
    "The largest $n$ is 34." is 34; "... is $\\frac{1}{2}$." is 1/2)."""
    found = [f(text) for name, f in (("last_latex", _last_latex_at), ("last_number", _last_number_at)) if name in fallbacks]
    found = [item for item in found if item]
    return max(found, key=lambda item: item[1])[0] if found else None


def last_line(text: str) -> str | None:
    """Rule 4: a last line that is only math (no prose words and no math delimiters)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    line = _clean(lines[-1])
    if not line or is_prose(line) or _DELIMITERS.search(line) or _BOX_START.search(line):
        return None
    return line if re.search(r"[\d\\]", line) else None


def single_word(text: str) -> str | None:
    """Rule 6: a text that is one word (optionally in `\\text{}`) -> `\\text{word}`."""
    match = re.fullmatch(r"\s*(?:\\text\{\s*)?([A-Za-z][A-Za-z'-]{0,40})\s*\}?\s*\.?\s*", text)
    return f"\\text{{{match.group(1)}}}" if match else None


def _phrase_answer(capture: str) -> str:
    """A phrase's capture as an answer: its math when it holds delimited math, else the text."""
    capture = _clean(capture.strip().strip('"'))
    if _BOX_START.search(capture):
        capture = final_boxes(capture) or ""
    elif _DELIMITERS.search(capture):
        capture = last_latex(capture) or ""
    return "" if is_prose(capture) else capture


def _minerva(tail: str, after: int) -> str | None:
    """Minerva's "The final answer is X. I hope it is correct." when it ends after position `after`."""
    matches = list(_MINERVA.finditer(tail))
    if not matches or matches[-1].end() <= after:
        return None
    return _phrase_answer(matches[-1].group(1)) or None


def read_answer(text: str, fallbacks: Sequence[str] = DEFAULT_FALLBACKS, all_boxes: bool = False) -> str | None:
    """The final answer of a text by the rules in the module docstring (box first, then `fallbacks`).

    `all_boxes`: every box is part of the answer (gold answers: they do not change their mind)."""
    unknown = [name for name in fallbacks if name not in FALLBACK_NAMES]
    if unknown:
        raise ValueError(f"unknown answer fallbacks {unknown}; known: {', '.join(FALLBACK_NAMES)}")
    tail = text[-FALLBACK_TAIL_CHARS:]
    boxes = _boxes(tail)
    if "final_answer_is" in fallbacks:
        minerva = _minerva(tail, boxes[-1][1] if boxes else -1)
        if minerva:
            return minerva
    boxed = final_boxes(text, all_boxes)
    if boxed:
        return boxed
    if _BOX_START.search(text):  # a box was opened and never closed: the answer was cut
        return None
    math_rules = [name for name in ("last_latex", "last_number") if name in fallbacks]
    for name in fallbacks:
        if name in FALLBACK_PATTERNS:
            matches = FALLBACK_PATTERNS[name].findall(tail)
            answer = _phrase_answer(matches[-1]) if matches else ""
        elif name in math_rules:
            if name != math_rules[0]:
                continue  # both run together, at the first of them
            answer = last_math(tail, math_rules)
        elif name == "last_line":
            answer = last_line(tail)
        else:
            answer = single_word(tail)
        if answer:
            return answer
    return None


# After a gold's last math span: one unit word (`$125$ miles`) and a full stop at most.
_GOLD_TAIL = re.compile(r"[ \t]{0,8}(?:[A-Za-z]{1,20}[ \t]{0,4})?\.?\s{0,8}")
GOLD_PHRASES = tuple(FALLBACK_PATTERNS)  # explicit answer phrases; never the last-line/-LaTeX/-number/word guesses


def delimited_only(text: str) -> str | None:
    """A text that is only delimited math (`$28\\%$`, `$$x = \\frac{1}{2}, x = 3$$`, `\\(1 - e\\)`,
    `$1$ and $2$`, `$125$ miles`): the spans' contents joined as one answer (a percent word after
    the last span kept), else None. Text before the first span, words between spans that are not
    separators, or more than one word after the last span -> None."""
    matches = list(_SPAN.finditer(text))
    if not matches or text[: matches[0].start()].strip():
        return None
    end = matches[-1].end()
    percent = _PERCENT_AFTER.match(text, end)
    if _GOLD_TAIL.fullmatch(text, percent.end() if percent else end) is None:
        return None
    for before, after in zip(matches, matches[1:]):
        gap = text[before.end() : after.start()]
        if len(gap) > _MAX_JOINER_CHARS or _JOINER.fullmatch(gap) is None:
            return None
    return last_latex(text)


def read_gold(text: str) -> str | None:
    """The answer of a gold that is not a bare expression, by the reliable rules only: boxes
    (joined like a prediction's), Minerva's ending and the answer phrases, or a text that is
    only delimited math. Never the last-line / last-LaTeX / last-number / single-word guesses:
    they are fine for one sample, but a gold misread would grade every trace of its problem
    against a different value ("sqrt(3)/3, or equivalently 1/sqrt(3)" is not 3), so a gold
    that only they could read has no answer (`unparsed_gold`)."""
    return read_answer(text, GOLD_PHRASES) or (None if has_box(text) else delimited_only(text.strip()))


def extract_answer(completion: str, fallbacks: Sequence[str] = DEFAULT_FALLBACKS) -> str | None:
    """The final answer of a completion, read from its answer part only (never the thinking)."""
    return read_answer(answer_part(completion), fallbacks)
