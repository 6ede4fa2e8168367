"""Meta-prover cost, measured side by side in one run.

1. Prefix reuse: one long R1-style trace (default 5000 thinking tokens, 12 episodes) proved
   by the transformers backend with cross-prefix KV reuse and without it (every prefix
   prefilled from scratch once, its K samples sharing that prefill: the naive cost). Prints
   prefill tokens per trace length and the prefill-token and wall-time ratios.
2. Adaptive sampling against fixed K, on traces the embedded model samples from the default
   problems: answers spent as a share of fixed K, and how often the decision (j*, and keep =
   a correct answer at j*) agrees with a fixed-K run, beside how often two fixed-K runs with
   different seeds agree (the floor: fixed K is a noisy estimate too). Three provings with
   three seeds, so no run shares draws with the one it is compared with.
3. The same comparison on simulated long R1-style traces (`pipeline.prover_sim`: known J
   curves, Bernoulli answers), over thousands of traces.

Run:  python benchmarks/prover_cost.py [--trace-tokens 5000] [--traces 16] [--k 8] [--simulated 2000]
          [--part reuse|adaptive|simulated]
Absolute times depend on the machine; compare the ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.adaptive import AdaptiveSettings
from pipeline.backends.transformers_backend import TransformersBackend
from pipeline.config import EpisodesConfig, ModelConfig, ProverConfig, load_params
from pipeline.episodes import split_episodes
from pipeline.models import load_causal_lm, load_tokenizer, prepare_base_model, resolve
from pipeline.problems import load_problems
from pipeline import prover_sim
from pipeline.prover import prove_traces, thinking_ids
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
        wall, stats = time.perf_counter() - start, backend.stats
        measured[name] = (wall, stats.prefill_tokens, stats.prefill_seconds)
        print(f"  {name:18s} {wall:7.1f} s: prefill {stats.prefill_seconds:6.1f} s in {stats.prefill_passes:3d} passes, "
              f"decode and the rest {wall - stats.prefill_seconds:6.1f} s | prefill {stats.prefill_tokens:6d} tokens = "
              f"{stats.prefill_tokens / length:.2f} x trace length")
    (naive_s, naive_p, naive_f), (reuse_s, reuse_p, reuse_f) = measured.values()
    print(f"  prefill-token ratio x{naive_p / reuse_p:.2f}, prefill-time ratio x{naive_f / reuse_f:.2f}, "
          f"wall-time ratio x{naive_s / reuse_s:.2f} (decoding the K answers is the same work in both: "
          f"{reuse_s - reuse_f:.1f} s of the reuse run)")


def counts(rows: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(answers, correct) per prefix of every trace, in trace and prefix order."""
    by_trace = defaultdict(list)
    for row in rows:
        by_trace[row["trace_id"]].append(row)
    ordered = [sorted(group, key=lambda r: r["prefix_index"]) for _, group in sorted(by_trace.items())]
    return [(np.array([r["n_samples"] for r in g]), np.array([r["n_correct"] for r in g])) for g in ordered]


def compare(name: str, fixed, other_seed, adaptive) -> None:
    """One line: adaptive's share of fixed-K answers, its agreement with fixed K, and fixed K's own."""
    share = prover_sim.answers(adaptive) / prover_sim.answers(fixed)
    print(f"  {name}: adaptive answers {share:.0%} of fixed K | agreement with fixed K: "
          f"adaptive [{prover_sim.agreement(adaptive, fixed)}] vs fixed K, other seed [{prover_sim.agreement(other_seed, fixed)}]")


def sampled_traces(model, tokenizer, prompts: PromptBuilder, args, ref) -> None:
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
    print(f"\n[adaptive, sampled traces] {len(traces)} traces of the default problems, {prefixes} prefixes, "
          f"mean trace {sum(t['n_tokens'] for t in traces) / len(traces):.0f} tokens, K = {args.k}")
    fixed = defaults.prover.model_copy(update={"k": args.k, "seed": 1})
    runs = {}
    for name, config in [("fixed K", fixed), ("fixed K, other seed", fixed.model_copy(update={"seed": 2})),
                         ("adaptive", fixed.model_copy(update={"adaptive": True, "seed": 3}))]:
        backend = TransformersBackend(model, tokenizer, args.batch_size)
        start = time.perf_counter()
        rows = prove_traces(traces, ends, answers, backend, prompts, config)
        runs[name] = counts(rows)
        print(f"  {name:20s} {time.perf_counter() - start:7.1f} s   answers {prover_sim.answers(runs[name]):5d}   "
              f"generated {backend.stats.generated_tokens:6d} tokens")
    compare(f"{len(traces)} sampled traces", runs["fixed K"], runs["fixed K, other seed"], runs["adaptive"])


def simulated_traces(args) -> None:
    defaults = load_params(REPO / "params.yaml").prover
    curves = prover_sim.r1_curves(args.simulated, seed=0)
    print(f"\n[adaptive, simulated R1-style traces] {len(curves)} traces, {sum(len(c) for c in curves)} prefixes "
          f"(5-40 episodes), K = {args.k}, shards of {defaults.shard_size}")
    settings = AdaptiveSettings(args.k, defaults.adaptive_step, risk=defaults.adaptive_risk)
    start = time.perf_counter()
    adaptive = prover_sim.adaptive(curves, settings, defaults.adaptive_initial, seed=3, shard_size=defaults.shard_size)
    print(f"  adaptive policy: {time.perf_counter() - start:.1f} s of planning")
    compare(f"{len(curves)} simulated traces", prover_sim.fixed_k(curves, args.k, seed=1),
            prover_sim.fixed_k(curves, args.k, seed=2), adaptive)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--simulated", type=int, default=1000, help="simulated traces")
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--trace-tokens", type=int, default=5000)
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--part", choices=["all", "reuse", "adaptive", "simulated"], default="all", help="run one part only")
    args = parser.parse_args()

    if args.part in ("all", "reuse", "adaptive"):
        ref = resolve(model_folder(args.model))
        tokenizer, model = load_tokenizer(ref), load_causal_lm(ref)
        prompts = PromptBuilder(tokenizer, "chatml_think")
        if args.part in ("all", "reuse"):
            prefix_reuse(model, tokenizer, prompts, args)
        if args.part in ("all", "adaptive"):
            sampled_traces(model, tokenizer, prompts, args, ref)
    if args.part in ("all", "simulated"):
        simulated_traces(args)


if __name__ == "__main__":
    main()
