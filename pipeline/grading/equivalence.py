"""Parse answers with math-verify's LaTeX parser and decide equivalence, in one process.

Only the LaTeX extraction is used: math-verify's plain-expression extraction hands text to
sympy's `parse_expr`, which evaluates Python, and model output must never be evaluated.
These functions have no time limit of their own; `pipeline.grading.pool` runs them in
worker processes under a deadline.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from math_verify import LatexExtractionConfig, parse, verify

from pipeline.grading.extraction import last_boxed
from pipeline.grading.normalize import readings

CORRECT, INCORRECT, UNPARSED = "correct", "incorrect", "unparsed"
MAX_ANSWER_CHARS = 2000
_LATEX = [LatexExtractionConfig(boxed_match_priority=0)]
# Time limits are enforced by the worker pool, so math-verify's "timeout disabled" notice is noise.
logging.getLogger("math_verify").setLevel(logging.ERROR)


@lru_cache(maxsize=65536)
def parse_math(text: str) -> tuple:
    """Parsed readings of one answer; empty when none of them is math."""
    if not text or len(text) > MAX_ANSWER_CHARS:
        return ()
    parsed_readings = []
    for reading in readings(text):
        parsed = parse(f"${reading}$", extraction_config=_LATEX, parsing_timeout=None, raise_on_error=False)
        # math-verify falls back to the raw string when it finds no math: that is not a parse.
        if parsed and not isinstance(parsed[0], str):
            parsed_readings.append(tuple(parsed))
    return tuple(parsed_readings)


def gold_text(answer: str) -> str:
    """The gold answer to parse: a worked solution (NuminaMath style) is read at its last box."""
    text = str(answer).strip()
    return last_boxed(text) or text


def parse_gold(answer: str) -> tuple:
    return parse_math(gold_text(answer))


def judge(gold: str, predicted: str) -> tuple[str, str | None]:
    """(grade, reason) for an extracted prediction; reason says why a grade is `unparsed`."""
    gold_parsed = parse_gold(gold)
    if not gold_parsed:
        return UNPARSED, "unparsed_gold"
    predicted_parsed = parse_math(predicted.strip())
    if not predicted_parsed:
        return UNPARSED, "unparsed_prediction"
    if len(gold_parsed) == 2 and len(predicted_parsed) == 2:  # both percentages: compare as percentages
        gold_parsed, predicted_parsed = gold_parsed[:1], predicted_parsed[:1]
    for gold_reading in gold_parsed:
        for predicted_reading in predicted_parsed:
            if verify(list(gold_reading), list(predicted_reading), timeout_seconds=None, raise_on_error=False):
                return CORRECT, None
    return INCORRECT, None
