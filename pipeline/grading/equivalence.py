"""Parse answers with math-verify's LaTeX parser and decide equivalence, in one process.

Only the LaTeX extraction is used: math-verify's plain-expression extraction hands text to
sympy's `parse_expr`, which evaluates Python, and model output must never be evaluated.
Bare answers are read like predictions when they are not a bare expression; gold answers that
are not a bare expression are read by the reliable rules only (boxes, answer phrases, delimited
math; never a last-number guess): see `prepare`. These functions have no
time limit of their own; `pipeline.grading.pool` runs them in worker processes under a limit.
"""

from __future__ import annotations

import logging
import math
import re
from decimal import Decimal
from functools import cache, lru_cache
from types import SimpleNamespace

from pipeline.grading.extraction import DEFAULT_FALLBACKS, has_box, is_prose, read_answer, read_gold
from pipeline.grading.normalize import readings

CORRECT, INCORRECT, UNPARSED = "correct", "incorrect", "unparsed"
MAX_ANSWER_CHARS = 2000
MAX_GOLD_CHARS = 20_000  # a worked solution is read at its answer, not parsed whole
_BIG_EXPONENT = re.compile(r"\^\s*\{?\s*\(?\s*\d{5,}")
_NUMBER_TOWER = re.compile(r"\^\s*\{?\s*(\d{1,6})\s*\^\s*\{?\s*(\d{1,6})")
MAX_NESTING, MAX_OPENERS_IN_A_ROW = 20, 10
_OPENERS_IN_A_ROW = re.compile(r"(?:[{(\[]\s{0,4}){%d}" % MAX_OPENERS_IN_A_ROW)
_PLAIN_DECIMAL = re.compile(r"[+-]?\d{1,40}(?:\.\d{1,40})?")
_DELIMITER = re.compile(r"(?<!\\)\$|\\[()\[\]]")
# Time limits are enforced by the worker pool, so math-verify's "timeout disabled" notice is noise.
logging.getLogger("math_verify").setLevel(logging.ERROR)


@cache
def _math() -> SimpleNamespace:
    """math-verify and the sympy classes compared here, imported on first use: about 0.8 s that a stage
    which grades nothing (split, score, select, export, train) need not pay. Grading workers pay it
    in their warm-up, before they report ready, so it never counts against an answer's time limit."""
    from math_verify import LatexExtractionConfig, parse, verify
    from sympy import And, FiniteSet, GreaterThan, LessThan, Or, Set, StrictGreaterThan, StrictLessThan

    return SimpleNamespace(
        parse=parse, verify=verify, latex=[LatexExtractionConfig(boxed_match_priority=0)], And=And, Or=Or,
        FiniteSet=FiniteSet, Set=Set, inequalities=(StrictLessThan, LessThan, StrictGreaterThan, GreaterThan),
    )


def prepare(text: str, gold: bool = False) -> str:
    """The answer to parse from a gold or bare answer: the text itself when it is a bare
    expression, else what the extraction rules read from it ("" when they find nothing).

    A bare answer (one sample) is read like a prediction, fallbacks included. A gold answer is
    read by the reliable rules only (`extraction.read_gold`): boxes, answer phrases, a text
    that is only delimited math; a gold that only a guess could read is "" (`unparsed_gold`)."""
    text = str(text).strip()
    if not text or len(text) > MAX_GOLD_CHARS:
        return ""
    if not is_prose(text) and not _DELIMITER.search(text) and not has_box(text):
        return text
    if gold:
        return read_gold(text) or ""
    return read_answer(text, (*DEFAULT_FALLBACKS, "single_word")) or ""


@lru_cache(maxsize=65536)
def parse_math(text: str) -> tuple:
    """Parsed readings of one answer; empty when none of them is math."""
    if not text or len(text) > MAX_ANSWER_CHARS:
        return ()
    parsed_readings = []
    for reading in readings(text):
        parsed = _math().parse(f"${reading}$", extraction_config=_math().latex, parsing_timeout=None, raise_on_error=False)
        # math-verify falls back to the raw string when it finds no math: that is not a parse.
        if parsed and not isinstance(parsed[0], str):
            parsed_readings.append(tuple(parsed))
    return tuple(parsed_readings)


def gold_text(answer: str) -> str:
    """The gold answer to parse: a sentence or worked solution is read at its answer by the
    reliable rules (`prepare(gold=True)`); the raw text when they read nothing, so a prose gold
    ("0 is the only possible value") stays prose for `pipeline.heldout.prose_issue`."""
    return prepare(answer, gold=True) or str(answer).strip()


def parse_gold(answer: str) -> tuple:
    return parse_math(prepare(answer, gold=True))


def _is_condition(expr) -> bool:
    """An inequality, or inequalities joined by and / or (equations are math-verify's to compare)."""
    m = _math()
    if isinstance(expr, m.inequalities):
        return True
    return isinstance(expr, (m.And, m.Or)) and all(_is_condition(arg) for arg in expr.args)


def _nesting_depth(answer: str) -> int:
    """The deepest nesting of `{`, `(` and `[` (one pass)."""
    depth = deepest = 0
    for char in answer:
        if char in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "})]" and depth:
            depth -= 1
    return deepest


def too_complex(answer: str) -> bool:
    """An integer exponent of 10,000 or more, or a tower of numbers whose exponent passes 10^4
    (`10^{10^{10}}`): no competition answer, and sympy would spend the whole time limit on it.
    So is bracket nesting deeper than `MAX_NESTING`, or `MAX_OPENERS_IN_A_ROW` brackets opened in
    a row (`{{{{{{{{{{3}}}}}}}}}}`): math-verify's parser is exponential in them (10 bare braces
    1.3 s, 12 braces 3.8 s, 15 nested fractions 1.5 s, 20 fractions 4 s of CPU), and such an
    answer would take two full limits (the retry) to end as `timeout`. Decided from the text
    alone, so such answers cost no worker time and no timeout."""
    if _BIG_EXPONENT.search(answer) or _OPENERS_IN_A_ROW.search(answer) or _nesting_depth(answer) > MAX_NESTING:
        return True
    for match in _NUMBER_TOWER.finditer(answer):
        base, exponent = int(match.group(1)), int(match.group(2))
        if base >= 2 and exponent * math.log10(base) > 4:  # the tower's exponent is base^exponent > 10^4
            return True
    return False


def plain_numbers_verdict(gold: str, predicted: str) -> tuple[str, None] | None:
    """The verdict for two plain decimal numbers (`42`, `-3.50`), compared exactly without sympy,
    so the commonest answers never wait for a worker; None for anything else."""
    gold, predicted = str(gold).strip(), predicted.strip()
    if not (_PLAIN_DECIMAL.fullmatch(gold) and _PLAIN_DECIMAL.fullmatch(predicted)):
        return None
    return (CORRECT, None) if Decimal(gold) == Decimal(predicted) else (INCORRECT, None)


def _as_set(expr):
    """Inequalities in one variable as the set they describe (`x < 3` -> (-oo, 3)), else None.

    `x < -1 \\text{ or } x > 2` parses as a set of inequalities: their union (a sympy Set)."""
    m = _math()
    if isinstance(expr, m.FiniteSet) and expr.args and all(_is_condition(arg) for arg in expr.args):
        expr = m.Or(*expr.args)
    if not _is_condition(expr) or len(expr.free_symbols) != 1:
        return None
    try:
        return expr.as_set()
    except (NotImplementedError, TypeError, ValueError):
        return None


def _same_set(gold: tuple, predicted: tuple) -> bool:
    """Inequality vs interval, both ways: compare the sets that conditions in one variable describe."""
    m = _math()
    gold_set = gold[0] if isinstance(gold[0], m.Set) and not isinstance(gold[0], m.FiniteSet) else _as_set(gold[0])
    predicted_set = (
        predicted[0] if isinstance(predicted[0], m.Set) and not isinstance(predicted[0], m.FiniteSet) else _as_set(predicted[0])
    )
    if gold_set is None or predicted_set is None:
        return False
    gold_condition, predicted_condition = _as_set(gold[0]) is not None, _as_set(predicted[0]) is not None
    if not (gold_condition or predicted_condition):
        return False  # two plain intervals: math-verify has compared them already
    if gold_condition and predicted_condition and gold[0].free_symbols != predicted[0].free_symbols:
        return False  # x < 3 is not y < 3
    return m.verify([gold_set], [predicted_set], timeout_seconds=None, raise_on_error=False)


def judge(gold: str, predicted: str) -> tuple[str, str | None]:
    """(grade, reason) for an extracted prediction; reason says why a grade is `unparsed`."""
    plain = plain_numbers_verdict(gold, predicted)
    if plain is not None:
        return plain
    if too_complex(predicted):
        return UNPARSED, "too_complex"
    gold_parsed = parse_gold(gold)
    if not gold_parsed:
        return UNPARSED, "unparsed_gold"
    predicted_text = prepare(predicted)
    if predicted_text and " ".join(predicted_text.split()) == " ".join(prepare(gold, gold=True).split()):
        return CORRECT, None  # the same text as a gold that parses: no need to compare values
    predicted_parsed = parse_math(predicted_text)
    if not predicted_parsed:
        return UNPARSED, "unparsed_prediction"
    if len(gold_parsed) == 2 and len(predicted_parsed) == 2:  # both percentages: compare as percentages
        gold_parsed, predicted_parsed = gold_parsed[:1], predicted_parsed[:1]
    for gold_reading in gold_parsed:
        for predicted_reading in predicted_parsed:
            if _math().verify(
                list(gold_reading), list(predicted_reading), allow_set_relation_comp=True, timeout_seconds=None,
                raise_on_error=False,
            ):
                return CORRECT, None
            if _same_set(gold_reading, predicted_reading):
                return CORRECT, None
    return INCORRECT, None
