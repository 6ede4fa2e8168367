from collections import Counter

from pipeline.config import ProverConfig, SelectConfig
from pipeline.prover import build_prefixes, prove_traces
from pipeline.regret import trace_regret
from pipeline.selection import mrt_target_ids, select_mrt, select_star
from pipeline.templates import PromptBuilder


def make_trace(tokenizer, prompts, thinking="I add the numbers.\n\nThe sum is 2.\n", answer="\n\nThe answer is \\boxed{2}."):
    thinking_ids = prompts.encode(thinking)
    completion_ids = thinking_ids + prompts.encode("</think>" + answer)
    return {
        "trace_id": "p1-r0-s0", "problem_id": "p1", "round": 0, "sample_index": 0, "model": "tiny",
        "prompt_ids": prompts.sampling_prompt_ids("Calculate 1 + 1."), "completion_ids": completion_ids,
        "thinking_end": len(thinking_ids), "correct": True, "finish_reason": "stop",
    }


def test_prefixes_cover_empty_boundaries_and_full_thinking(tokenizer):
    prompts = PromptBuilder(tokenizer, "chatml_think")
    trace = make_trace(tokenizer, prompts)
    ends = [5, trace["thinking_end"]]
    prefixes = build_prefixes(trace, ends, prompts)
    assert [p.index for p in prefixes] == [0, 1, 2]
    assert prefixes[0].thinking_tokens == 0 and prefixes[0].forced
    assert prefixes[1].thinking_tokens == 5 and prefixes[1].forced
    assert tokenizer.decode(list(prefixes[1].tail_ids)).lstrip("\n").startswith("Time is up.")
    # j = E of a closed trace: the trace's own `</think>` ids, nothing added before or after.
    assert not prefixes[2].forced and list(prefixes[2].tail_ids) == trace["completion_ids"][trace["thinking_end"] : trace["thinking_end"] + 3]
    assert tokenizer.decode(list(prefixes[2].tail_ids)) == "</think>"


def test_prover_grades_answers_and_selection_truncates(tokenizer, tiny_backend):
    prompts = PromptBuilder(tokenizer, "chatml_think")
    trace = make_trace(tokenizer, prompts)
    config = ProverConfig(k=4, max_answer_tokens=16, temperature=0.7)
    rows = prove_traces([trace], {trace["trace_id"]: [5, trace["thinking_end"]]}, {"p1": "2"}, tiny_backend, prompts, config)
    assert [r["prefix_index"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert row["n_samples"] == 4 and 0 <= row["j_low"] <= row["j_hat"] <= row["j_high"] <= 1
        assert (row["correct_answer"] is None) == (row["n_correct"] == 0)
    assert sum(r["n_correct"] for r in rows) > 0  # the tiny model was taught to answer 2

    regret = trace_regret(rows, [64.0])
    problems = {"p1": {"problem_id": "p1", "problem": "Calculate 1 + 1."}}
    drops = Counter()
    dropped = select_mrt([trace], rows, {trace["trace_id"]: regret}, problems, prompts, SelectConfig(empty_thinking="drop"), drops)
    if regret["best_prefix"] == 0:  # empty thinking: dropped and counted under `drop`
        assert dropped == [] and drops == Counter(empty_thinking=1)
    selected = select_mrt([trace], rows, {trace["trace_id"]: regret}, problems, prompts, SelectConfig(empty_thinking="keep"))
    assert len(selected) == 1
    best = next(r for r in rows if r["prefix_index"] == regret["best_prefix"])
    target = selected[0]["completion_ids"]
    assert target == mrt_target_ids(trace, best, prompts, keep_forced_stop_text=False)
    assert target[: len(prompts.think_open_ids)] == prompts.think_open_ids
    assert target[-1] == tokenizer.eos_token_id
    assert "Time is up" not in selected[0]["completion"] and "</think>" in selected[0]["completion"]
    assert selected[0]["completion"].endswith(best["correct_answer"])


def test_selection_skips_traces_without_a_correct_answer_at_the_best_prefix(tokenizer):
    prompts = PromptBuilder(tokenizer, "chatml_think")
    trace = make_trace(tokenizer, prompts)
    rows = [
        {"trace_id": trace["trace_id"], "problem_id": "p1", "prefix_index": j, "n_episodes": 1, "prefix_tokens": t,
         "forced": j == 0, "n_samples": 4, "n_correct": 0, "n_length_cut": 0, "j_hat": 0.0, "mean_answer_tokens": 5.0,
         "correct_answer": None, "correct_answer_ids": None}
        for j, t in ((0, 0), (1, trace["thinking_end"]))
    ]
    regret = trace_regret(rows, [64.0])
    problems = {"p1": {"problem": "Calculate 1 + 1."}}
    assert select_mrt([trace], rows, {trace["trace_id"]: regret}, problems, prompts, SelectConfig()) == []
    star = select_star([trace], {}, problems, prompts, SelectConfig())
    assert len(star) == 1 and star[0]["completion_ids"][-1] == tokenizer.eos_token_id


def test_adaptive_prover_spends_at_most_k_and_starts_small(tokenizer, tiny_backend):
    prompts = PromptBuilder(tokenizer, "chatml_think")
    trace = make_trace(tokenizer, prompts)
    config = ProverConfig(k=6, max_answer_tokens=12, adaptive=True, adaptive_initial=2, adaptive_step=2)
    rows = prove_traces([trace], {trace["trace_id"]: [5, trace["thinking_end"]]}, {"p1": "2"}, tiny_backend, prompts, config)
    assert all(2 <= r["n_samples"] <= 6 and r["n_samples"] % 2 == 0 for r in rows)
    assert all(r["j_hat"] == r["n_correct"] / r["n_samples"] for r in rows)


def test_adaptive_initial_cannot_exceed_k():
    import pytest

    with pytest.raises(ValueError, match="adaptive_initial"):
        ProverConfig(k=2, adaptive=True, adaptive_initial=4)
