"""Rewrite plain-text answers into LaTeX that math-verify reads, by string rules only.

Gold columns often hold plain text (`C(10, 5)`, `sqrt(2)`, `2/3`, `pi/4`), and models
sometimes answer that way. These are rewritten into LaTeX with balanced-parenthesis
matching; nothing is ever evaluated. A trailing percent sign yields two readings
(`10\\%` -> `\\frac{10}{100}` and `10`), since graders in this field accept both.
"""

from __future__ import annotations

import re

from pipeline.grading.extraction import plain_number

_CALL = re.compile(r"\b(sqrt|binom|choose|nCr|C)\s*\(")
_FUNCTION = re.compile(r"\b(ln|log|exp|sin|cos|tan|cot|sec|csc|arcsin|arccos|arctan)\s*(?=\()")
_THIN_SPACE_THOUSANDS = re.compile(r"(?<=\d)\\[,;:! ](?=\d{3}(?!\d))")  # 1\,000 -> 1000
_SPACE_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:[ \u00a0\u2009\u202f]\d{3})+(?![\d])")  # 1 000, 1\u2009000
_PLAIN_NUMBER = re.compile(r"[-−]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|0,\d+|\d+,\d{2})")
_MATHRM_LETTER = re.compile(r"\\mathrm\s*\{\s*([A-Za-z])\s*\}")
_LONE_DOLLAR = re.compile(r"(?<!\\)\$")
_AND_OR = re.compile(r"\s+(?:and|or)\s+")
_SYMBOLS = {"°": "^\\circ", "\\varnothing": "\\emptyset", "−": "-", "×": "\\times ", "π": "\\pi "}
_PI = re.compile(r"(?<![\\A-Za-z])pi(?![A-Za-z])")
_PERCENT = re.compile(
    r"^(.*?)\s*(?:\\%|%|\\text\{\s*\\?%\s*\}|\\percent|(?:\\text\{\s*)?(?:percent(?:age)?|pct)\s*\}?)\s*$",
    re.DOTALL | re.IGNORECASE,
)
_MAX_REWRITES = 64


def _closing_paren(text: str, open_at: int) -> int:
    depth = 0
    for position in range(open_at, len(text)):
        if text[position] == "(":
            depth += 1
        elif text[position] == ")":
            depth -= 1
            if depth == 0:
                return position
    return -1


def _split_top_comma(inner: str) -> tuple[str, str] | None:
    depth = 0
    for position, char in enumerate(inner):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            return inner[:position].strip(), inner[position + 1 :].strip()
    return None


def plain_to_latex(text: str) -> str:
    """`sqrt(x)` -> `\\sqrt{x}`, `C(n, k)` / `binom(n, k)` -> `\\binom{n}{k}`, `pi` -> `\\pi`.

    Text that already contains a backslash is taken to be LaTeX and left alone.
    """
    if "\\" in text:
        return text
    for _ in range(_MAX_REWRITES):
        match = _CALL.search(text)
        if match is None:
            break
        open_at = match.end() - 1
        close_at = _closing_paren(text, open_at)
        if close_at < 0:
            break
        inner = text[open_at + 1 : close_at]
        if match.group(1) == "sqrt":
            replacement = f"\\sqrt{{{inner}}}"
        else:
            parts = _split_top_comma(inner)
            if parts is None:
                break
            replacement = f"\\binom{{{parts[0]}}}{{{parts[1]}}}"
        text = text[: match.start()] + replacement + text[close_at + 1 :]
    text = _FUNCTION.sub(lambda m: "\\" + m.group(1), text)
    return _PI.sub(r"\\pi ", text)


def readings(text: str) -> tuple[str, ...]:
    """The LaTeX readings of one answer: usually one, two for a percentage."""
    text = text.strip().rstrip(".").rstrip()  # a sentence's full stop is not part of the answer
    text = _LONE_DOLLAR.sub(" ", text).strip()  # a box that spans math delimiters: `12 $ and $13`
    if "\\text" not in text:
        text = _AND_OR.sub(", ", text)  # `x = 1 or x = 2`: the set of both
    for symbol, latex in _SYMBOLS.items():
        text = text.replace(symbol, latex)
    text = _MATHRM_LETTER.sub(r"\1", text)  # \mathrm{e}: the constant e, not a unit to drop
    text = _THIN_SPACE_THOUSANDS.sub("", plain_to_latex(text))
    text = _SPACE_THOUSANDS.sub(lambda m: re.sub(r"\s", "", m.group()), text)
    if _PLAIN_NUMBER.fullmatch(text):  # 7,425,000 / 0,111 / 2,74: one plain-text number
        text = plain_number(text)
    match = _PERCENT.match(text)
    if match and match.group(1).strip():
        number = match.group(1).strip()
        return (f"\\frac{{{number}}}{{100}}", number)
    return (text,)
