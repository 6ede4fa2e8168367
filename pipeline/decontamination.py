"""Decontamination: keep eval problems (and benchmark problems) out of the training split.

A training problem is contaminated when its normalized text equals an eval problem's, or
when both share a run of `ngram` consecutive tokens (the GPT-3 / Llama style n-gram test,
13 by default). Tokens are lower-cased words and numbers plus the operators `+ - * / = < > ^`,
so `1 + 5` and `1 - 5` differ while spacing, `$`, braces and punctuation do not count. A text
shorter than `ngram` tokens is only checked for the exact match, so short shared phrases
("What is the value of") are never a hit. Invisible format characters (Unicode category Cf:
zero-width space and joiner, soft hyphen, BOM, direction marks) never count either, so a copy
that differs only by them is the same problem.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_EXACT_TOKEN = re.compile(r"\w+|[^\w\s]")
_NGRAM_TOKEN = re.compile(r"\w+|[+\-*/=<>^]")


def fold(text: str) -> str:
    """NFKC form, lower case, format characters (category Cf) removed: what every key compares."""
    if text.isascii():  # no format characters, already NFKC
        return text.lower()
    # Removed before NFKC: a joiner between a letter and its accent would block their composition.
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return unicodedata.normalize("NFKC", text).lower()



def exact_key(text: str) -> str:
    """Text up to case, Unicode form and spacing (`1+5` equals `1 + 5`; `(1+2)*3` differs from `1+2*3`)."""
    return " ".join(_EXACT_TOKEN.findall(fold(text)))


def ngram_tokens(text: str) -> list[str]:
    return _NGRAM_TOKEN.findall(fold(text))


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


@dataclass(frozen=True)
class Overlap:
    """Why a text is contaminated: which eval problem it overlaps, and how."""

    eval_id: str
    eval_source: str
    kind: str  # exact | ngram
    span: str  # the shared n-gram (empty for an exact match)

    def reason(self, n: int | None) -> str:
        where = f"eval problem {self.eval_id} ({self.eval_source})"
        if self.kind == "exact":
            return f"contaminated: same text as {where}"
        return f"contaminated: shares a {n}-token span with {where}: {self.span[:120]!r}"


class EvalIndex:
    """The eval problems, indexed for exact and n-gram look-ups (`ngram=None`: exact only)."""

    def __init__(self, ngram: int | None = 13):
        self.ngram = ngram
        self._exact: dict[str, tuple[str, str]] = {}
        self._grams: dict[tuple[str, ...], tuple[str, str]] = {}

    def add(self, problem_id: str, source: str, text: str) -> None:
        owner = (problem_id, source)
        self._exact.setdefault(exact_key(text), owner)
        if self.ngram:
            for gram in ngrams(ngram_tokens(text), self.ngram):
                self._grams.setdefault(gram, owner)

    def exact(self, text: str) -> Overlap | None:
        owner = self._exact.get(exact_key(text))
        return Overlap(owner[0], owner[1], "exact", "") if owner else None

    def find(self, text: str) -> Overlap | None:
        """The first overlap of `text` with an indexed eval problem: exact match first, then n-grams in text order."""
        hit = self.exact(text)
        if hit or not self.ngram:
            return hit
        tokens = ngram_tokens(text)
        for i in range(len(tokens) - self.ngram + 1):
            gram = tuple(tokens[i : i + self.ngram])
            owner = self._grams.get(gram)
            if owner:
                return Overlap(owner[0], owner[1], "ngram", " ".join(gram))
        return None

    def __len__(self) -> int:
        return len(self._exact)
