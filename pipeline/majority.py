"""Majority voting (maj@k): answers grouped by grader equivalence, an unbiased estimator over subsets.

Classes. Every answer graded correct belongs to one class, the gold class (label 0): `0.5` and
`\\frac12` are one answer. Incorrect answers are grouped by the grader itself: two answers are one
class when the grader, given one as the gold answer, grades the other correct (classes are the
connected components of that relation, so the grouping does not depend on sample order).
Unparsed samples (no extracted answer, or one the grader could not read) do not vote.

Estimator. maj@k of one problem is the expected correctness of a majority vote over a subset of
k of its n samples drawn uniformly without replacement, i.e. the mean over all C(n, k) subsets,
as pass@k is for "any correct". Ties are counted fractionally: when t classes share the top count
and the gold class is one of them, the vote is worth 1/t (a uniformly random tie-break). A subset
where nobody votes is worth 0. Computed exactly by counting, without enumerating subsets.
"""

from __future__ import annotations

import math
from collections import defaultdict
from fractions import Fraction
from typing import Callable, Sequence

GOLD = 0

Equivalent = Callable[[list[tuple[str, str]]], list[bool]]


def grader_equivalence(grader) -> Equivalent:
    """`equivalent(pairs)` from a `pipeline.grading.Grader`: is `b` correct with `a` as the gold answer?"""

    def equivalent(pairs: list[tuple[str, str]]) -> list[bool]:
        if not pairs:
            return []
        return [g.correct for g in grader.grade_answers([a for a, _ in pairs], [b for _, b in pairs])]

    return equivalent


def _votes(trace: dict) -> bool:
    return bool(trace["correct"]) or (trace["grade"] == "incorrect" and trace.get("extracted") is not None)


def vote_labels(traces: list[dict], equivalent: Equivalent) -> dict[str, int | None]:
    """{trace_id: class label}: 0 for correct answers, 1.. per problem for classes of incorrect
    answers, None for samples that do not vote. All grader calls go in one batch."""
    distinct: dict[str, list[str]] = defaultdict(list)  # problem -> distinct incorrect answers
    for trace in traces:
        if _votes(trace) and not trace["correct"]:
            answer = trace["extracted"].strip()
            if answer not in distinct[trace["problem_id"]]:
                distinct[trace["problem_id"]].append(answer)
    pairs = [(pid, i, j) for pid, answers in distinct.items() for i in range(len(answers)) for j in range(i + 1, len(answers))]
    same = equivalent([(distinct[pid][i], distinct[pid][j]) for pid, i, j in pairs])
    parent = {(pid, i): (pid, i) for pid, answers in distinct.items() for i in range(len(answers))}

    def root(node):
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for (pid, i, j), joined in zip(pairs, same):
        if joined:
            parent[root((pid, j))] = root((pid, i))
    label_of: dict[tuple, int] = {}
    for pid, answers in distinct.items():
        roots: dict[tuple, int] = {}
        for i in range(len(answers)):
            label_of[(pid, i)] = roots.setdefault(root((pid, i)), len(roots) + 1)
    labels: dict[str, int | None] = {}
    for trace in traces:
        if not _votes(trace):
            labels[trace["trace_id"]] = None
        elif trace["correct"]:
            labels[trace["trace_id"]] = GOLD
        else:
            pid = trace["problem_id"]
            labels[trace["trace_id"]] = label_of[(pid, distinct[pid].index(trace["extracted"].strip()))]
    return labels


def maj_at_k(labels: Sequence[int | None], k: int) -> float:
    """Expected majority-vote correctness over all size-k subsets of `labels` (see module docstring).

    `labels` holds one entry per sample: GOLD (0) for a correct answer, another int per class of
    incorrect answers, None for a sample that does not vote."""
    n = len(labels)
    if not 0 < k <= n:
        raise ValueError(f"maj@k needs 0 < k <= n (n={n}, k={k})")
    sizes: dict[int, int] = defaultdict(int)
    for label in labels:
        if label is not None:
            sizes[label] += 1
    gold = sizes.pop(GOLD, 0)
    abstain = n - gold - sum(sizes.values())
    total = Fraction(0)
    for v in range(1, min(gold, k) + 1):  # the gold class gets v votes in the subset
        # ways[(drawn, ties)]: ways to draw `drawn` samples from the other classes, each getting
        # at most v votes, `ties` of them exactly v.
        ways: dict[tuple[int, int], int] = {(0, 0): 1}
        for size in sizes.values():
            step: dict[tuple[int, int], int] = defaultdict(int)
            for (drawn, ties), count in ways.items():
                for x in range(0, min(size, v, k - v - drawn) + 1):
                    step[(drawn + x, ties + (x == v))] += count * math.comb(size, x)
            ways = step
        for (drawn, ties), count in ways.items():
            rest = k - v - drawn
            total += Fraction(math.comb(gold, v) * count * math.comb(abstain, rest), ties + 1)
    return float(total / math.comb(n, k))
