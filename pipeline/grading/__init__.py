"""Math answer grading: extraction, math-verify equivalence, hard time limits, batching.

Three outcomes, `correct`, `incorrect` and `unparsed`, with a reason for `unparsed`. Only
the answer part of a completion (after `</think>`) is graded; a gold answer that cannot be
parsed never grades as correct; nothing from a model or dataset is ever evaluated. The
extraction rules and the CPU-time limits are described in docs/grading.md.
"""

from pipeline.grading.equivalence import CORRECT, INCORRECT, UNPARSED, gold_text, judge, parse_gold, parse_math, prepare
from pipeline.grading.extraction import (
    DEFAULT_FALLBACKS, FALLBACK_NAMES, FALLBACK_PATTERNS, THINK_CLOSE, answer_part, extract_answer, last_boxed, read_answer,
)
from pipeline.grading.normalize import plain_to_latex, readings
from pipeline.grading.pool import Grade, Grader, GraderStats, GraderUnavailableError, default_grader, grade_answer, grade_completion

__all__ = [
    "CORRECT", "INCORRECT", "UNPARSED", "DEFAULT_FALLBACKS", "FALLBACK_NAMES", "FALLBACK_PATTERNS", "THINK_CLOSE",
    "Grade", "Grader", "GraderStats", "GraderUnavailableError", "answer_part", "default_grader", "extract_answer", "gold_text",
    "grade_answer", "grade_completion", "judge", "last_boxed", "parse_gold", "parse_math",
    "plain_to_latex", "prepare", "read_answer", "readings",
]
