"""Meta-prover cost, measured side by side in one run on the embedded model.

1. Prefix reuse: one long R1-style trace (default 5000 thinking tokens, 12 episodes) proved
   by the transformers backend with cross-prefix KV reuse and without it (every prefix
   prefilled from scratch once, its K samples sharing that prefill: the naive cost). Prints prefill tokens per trace length and the
   prefill-token and wall-time ratios.
2. Adaptive sampling against fixed K on the default problems: answers spent, and how
   often the selected prefix j* (and the keep decision) differ.

Run:  python benchmarks/prover_cost.py [--trace-tokens 5000] [--traces 16] [--k 8] [--part reuse|adaptive]
Absolute times depend on the machine; compare the ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from pipeline.backends.transformers_backend import TransformersBackend
from pipeline.config import EpisodesConfig, ModelConfig, ProverConfig, load_params
from pipeline.episodes import split_episodes
from pipeline.models import load_causal_lm, load_tokenizer, prepare_base_model, resolve
from pipeline.problems import load_problems
from pipeline.prover import prove_traces, thinking_ids
from pipeline.regret import trace_regret
from pipeline.sampling import sample_traces
from pipeline.templates import PromptBuilder
from pipeline.tokens import decode, token_char_starts

REPO = Path(__file__).resolve().parents[1]


def model_folder(path: str | None) -> Path:
    if path:
        return Path(path)
    if Path("data/base_model").exists():
        return Path("data/base_model")
    out = Path(tempfile.mkdtemp(prefix="mrt-bench-")) / "base_model"
    prepare_base_model(ModelConfig(), out)
    return out


def long_trace(prompts: PromptBuilder, tokens: int, episodes: int) -> tuple[dict, list[int]]:
    """A hand-built R1-style trace: arithmetic paragraphs, every few opened by a marker."""
    markers = ["Wait", "But wait", "Alternatively", "But let me double-check", "But hold on"]
    paragraphs = []
    while len(prompts.encode("\n\n".join(paragraphs))) < tokens:
        a, b = 17 + len(paragraphs), 29 + 2 * len(paragraphs)
        paragraphs.append(f"I add {a} and {b}: {a} + {b} = {a + b}, and then subtract {b} to get {a} back.")
    spacing = max(3, len(paragraphs) // episodes)  # episodes spread evenly over the trace
    for n, index in enumerate(range(spacing, len(paragraphs), spacing)):
        paragraphs[index] = f"{markers[n % len(markers)]}, let me redo this. " + paragraphs[index]
    ids = prompts.encode("\n\n".join(paragraphs) + "\n</think>\n\nThe answer is \\boxed{2}.")
    text = decode(prompts.tokenizer, ids)
    end = token_char_starts(prompts.tokenizer, ids)
    thinking_end = max(j for j, c in enumerate(end) if c <= text.index("</think>"))
    trace = {"trace_id": "long", "problem_id": "long", "prompt_ids": prompts.sampling_prompt_ids("Calculate 1 + 1."),
             "completion_ids": ids, "thinking_end": thinking_end}
    thinking = ids[:thinking_end]
    found, _ = split_episodes(decode(prompts.tokenizer, thinking), token_char_starts(prompts.tokenizer, thinking),
                              EpisodesConfig(max_episodes=episodes - 1))
    return trace, [e.token_end for e in found]


def prefix_reuse(model, tokenizer, prompts: PromptBuilder, args) -> None:
    trace, ends = long_trace(prompts, args.trace_tokens, args.episodes)
    length = len(trace["prompt_ids"]) + trace["thinking_end"]
    print(f"[prefix reuse] one trace: {trace['thinking_end']} thinking tokens + {len(trace['prompt_ids'])} prompt tokens, "
          f"{len(ends)} episodes, {len(ends) + 1} prefixes, K = 4, 16 answer tokens")
    config = ProverConfig(k=4, max_answer_tokens=16)
    measured = {}
    for name, reuse in (("naive (no reuse)", False), ("KV-cache reuse", True)):
        backend = TransformersBackend(model, tokenizer, args.batch_size, reuse_prefixes=reuse)
        start = time.perf_counter()
        prove_traces([trace], {"long": ends}, {"long": "2"}, backend, prompts, config)
        measured[name] = (time.perf_counter() - start, backend.stats.prefill_tokens)
        print(f"  {name:18s} {measured[name][0]:7.1f} s   prefill {measured[name][1]:6d} tokens = "
              f"{measured[name][1] / length:.2f} x trace length")
    (naive_s, naive_p), (reuse_s, reuse_p) = measured.values()
    print(f"  prefill-token ratio x{naive_p / reuse_p:.2f}, wall-time ratio x{naive_s / reuse_s:.2f}")


def decisions(rows: list[dict]) -> dict[str, tuple[int, bool]]:
    by_trace = defaultdict(list)
    for row in rows:
        by_trace[row["trace_id"]].append(row)
    out = {}
    for trace_id, prefixes in by_trace.items():
        regret = trace_regret(prefixes, [1.0])
        best = next(p for p in prefixes if p["prefix_index"] == regret["best_prefix"])
        out[trace_id] = (regret["best_prefix"], best["n_correct"] > 0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--trace-tokens", type=int, default=5000)
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--part", choices=["all", "reuse", "adaptive"], default="all", help="run one part only")
    args = parser.parse_args()

    ref = resolve(model_folder(args.model))
    tokenizer, model = load_tokenizer(ref), load_causal_lm(ref)
    prompts = PromptBuilder(tokenizer, "chatml_think")
    if args.part in ("all", "reuse"):
        prefix_reuse(model, tokenizer, prompts, args)
    if args.part == "reuse":
        return
    defaults = load_params(REPO / "params.yaml")
    train, _, _ = load_problems(defaults.problems.model_copy(update={"train_size": args.traces}))
    problems = train.to_pylist()
    answers = {p["problem_id"]: p["answer"] for p in problems}
    traces = sample_traces(problems, TransformersBackend(model, tokenizer, args.batch_size), prompts,
                           defaults.sample, 0, ref.label)
    ends = {}
    for trace in traces:
        ids = thinking_ids(trace)
        episodes, _ = split_episodes(decode(tokenizer, ids), token_char_starts(tokenizer, ids), defaults.episodes)
        ends[trace["trace_id"]] = [e.token_end for e in episodes]
    prefixes = sum(len(e) + 1 for e in ends.values())
    print(f"\n[adaptive] {len(traces)} sampled traces of the default problems, {prefixes} prefixes, "
          f"mean trace {sum(t['n_tokens'] for t in traces) / len(traces):.0f} tokens, K = {args.k}")

    fixed = defaults.prover.model_copy(update={"k": args.k})
    results = {}
    for name, config in [("fixed K", fixed), ("adaptive", fixed.model_copy(update={"adaptive": True}))]:
        backend = TransformersBackend(model, tokenizer, args.batch_size)
        start = time.perf_counter()
        rows = prove_traces(traces, ends, answers, backend, prompts, config)
        seconds = time.perf_counter() - start
        results[name] = (rows, seconds, backend.stats)
        print(f"  {name:10s} {seconds:7.1f} s   answers {sum(r['n_samples'] for r in rows):5d}   "
              f"generated {backend.stats.generated_tokens:6d} tokens")

    reuse, adaptive = results.values()
    spent = sum(r["n_samples"] for r in adaptive[0]) / sum(r["n_samples"] for r in reuse[0])
    fixed_decisions, adaptive_decisions = decisions(reuse[0]), decisions(adaptive[0])
    differ = sum(fixed_decisions[t][0] != adaptive_decisions[t][0] for t in fixed_decisions)
    keep_differ = sum(fixed_decisions[t][1] != adaptive_decisions[t][1] for t in fixed_decisions)
    print(f"  adaptive: {spent:.0%} of fixed-K answers, wall time x{reuse[1] / adaptive[1]:.2f}; selected prefix differs "
          f"on {differ}/{len(fixed_decisions)} traces, keep decision on {keep_differ}/{len(fixed_decisions)} "
          f"(fixed K is itself a noisy estimate: differences include its own sampling noise)")


if __name__ == "__main__":
    main()
