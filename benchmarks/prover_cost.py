"""Meta-prover cost, measured side by side in one run.

1. Prefix reuse: one long R1-style trace (default 5000 thinking tokens, 12 episodes) proved
   by the transformers backend with cross-prefix KV reuse and without it (every prefix
   prefilled from scratch once, its K samples sharing that prefill: the naive cost). Prints
   prefill tokens per trace length and the prefill-token and wall-time ratios.
2. Adaptive sampling against fixed K, on traces the embedded model samples from the default
   problems: answers spent as a share of fixed K, and how often the decision (j*, and keep =
   a correct answer at j*) agrees with a fixed-K run, beside how often a second fixed-K run with
   other answers agrees (the floor: fixed K is a noisy estimate too). The traces are proved once
   with a pool of 3 x K answers per prefix; each replay runs adaptive sampling on answers drawn
   from the pool and compares it with 200 pairs of fixed-K runs drawn from the answers it left
   (answers are exchangeable, so this is the three-provings experiment, averaged over many
   splits instead of one: one split of 32 traces moves agreement by several points). Fixed K'
   < K is printed beside it, to show what the same answers buy without adaptivity.
3. The same comparison on simulated long R1-style traces (`pipeline.prover_sim`: known J
   curves, Bernoulli answers), with the agreement expected over 200 fixed-K pairs per trace.

Run:  python benchmarks/prover_cost.py [--trace-tokens 5000] [--traces 16] [--k 8] [--simulated 2000]
          [--part reuse|adaptive|simulated] [--replays 20] [--risks 0.15,0.35]
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
    totals = defaultdict(lambda: np.zeros(3))  # mode -> (wall, prefill tokens, prefill seconds) summed over repeats
    for repeat in range(args.repeats):  # alternating, so a slow spell of the machine hits both modes
        for name, reuse in (("naive (no reuse)", False), ("KV-cache reuse", True)):
            backend = TransformersBackend(model, tokenizer, args.batch_size, reuse_prefixes=reuse)
            start = time.perf_counter()
            prove_traces([trace], {"long": ends}, {"long": "2"}, backend, prompts, config)
            wall, stats = time.perf_counter() - start, backend.stats
            totals[name] += (wall, stats.prefill_tokens, stats.prefill_seconds)
            print(f"  {name:18s} {wall:7.1f} s: prefill {stats.prefill_seconds:6.1f} s in {stats.prefill_passes:3d} passes, "
                  f"decode and the rest {wall - stats.prefill_seconds:6.1f} s | prefill {stats.prefill_tokens:6d} tokens = "
                  f"{stats.prefill_tokens / length:.2f} x trace length")
    (naive_s, naive_p, naive_f), (reuse_s, reuse_p, reuse_f) = totals.values()
    print(f"  over {args.repeats} alternating runs of each: prefill-token ratio x{naive_p / reuse_p:.2f}, prefill-time ratio "
          f"x{naive_f / reuse_f:.2f}, wall-time ratio x{naive_s / reuse_s:.2f} (decoding the K answers is the same work in "
          f"both: {(reuse_s - reuse_f) / args.repeats:.1f} s of a reuse run)")


def counts(rows: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(answers, correct) per prefix of every trace, in trace and prefix order."""
    by_trace = defaultdict(list)
    for row in rows:
        by_trace[row["trace_id"]].append(row)
    ordered = [sorted(group, key=lambda r: r["prefix_index"]) for _, group in sorted(by_trace.items())]
    return [(np.array([r["n_samples"] for r in g]), np.array([r["n_correct"] for r in g])) for g in ordered]


def schemes(args, defaults: ProverConfig) -> list[tuple[str, AdaptiveSettings, int | None]]:
    """What is compared with fixed K: adaptive at each risk, and fixed K' < K at the same kind of cost."""
    out = [(f"adaptive, risk {risk:g}", AdaptiveSettings(args.k, defaults.adaptive_step, risk=risk), None) for risk in args.risks]
    for fixed in sorted({max(1, args.k // 2), max(1, 3 * args.k // 4)}):
        out.append((f"fixed K' = {fixed}", AdaptiveSettings(args.k, defaults.adaptive_step), fixed))
    return out


def mean_se(values: list[float]) -> str:
    values = np.asarray(values)
    return f"{values.mean():6.1%} ± {values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0:.1%}"


def report(name: str, results: list[prover_sim.Comparison], seconds: float) -> None:
    """One line per scheme: share of fixed K's answers; j* and keep agreement with fixed K beside the
    floor (fixed K against fixed K with other answers), and the difference, mean ± standard error."""
    tested = [r.tested for r in results]
    floor = [r.floor for r in results]
    print(f"  {name:22s} answers {mean_se([r.share for r in results])} | j* {mean_se([t.j_star for t in tested])} "
          f"(floor {mean_se([f.j_star for f in floor])}, difference {mean_se([t.j_star - f.j_star for t, f in zip(tested, floor)])}) | "
          f"keep {mean_se([t.keep for t in tested])} (floor {mean_se([f.keep for f in floor])}, "
          f"difference {mean_se([t.keep - f.keep for t, f in zip(tested, floor)])}) | {seconds:.0f} s")


def sampled_traces(model, tokenizer, prompts: PromptBuilder, args, ref) -> None:
    """Adaptive vs fixed K on the model's own traces, replayed from one pool of 3 x K answers per prefix."""
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
    pool_k = 3 * args.k
    print(f"\n[adaptive, sampled traces] {len(traces)} traces of the default problems, {prefixes} prefixes, "
          f"mean trace {sum(t['n_tokens'] for t in traces) / len(traces):.0f} tokens, K = {args.k}; a pool of "
          f"{pool_k} answers per prefix (three fixed-K provings' worth), replayed {args.replays} times")
    backend = TransformersBackend(model, tokenizer, args.batch_size)
    start = time.perf_counter()
    rows = prove_traces(traces, ends, answers, backend, prompts, defaults.prover.model_copy(update={"k": pool_k, "seed": 1}))
    pools = counts(rows)
    print(f"  pool: {time.perf_counter() - start:.1f} s, {prover_sim.answers(pools)} answers, "
          f"{backend.stats.generated_tokens} generated tokens")
    shard = defaults.prover.shard_size
    for name, settings, fixed in schemes(args, defaults.prover):
        start = time.perf_counter()
        results = [prover_sim.replay(pools, settings, defaults.prover.adaptive_initial, seed, shard, fixed=fixed)
                   for seed in range(args.replays)]
        report(name, results, time.perf_counter() - start)
    print("  (answers: share of fixed K's; agreement with a fixed-K run; floor: a second fixed-K run's; "
          "mean ± standard error over the replays)")


def simulated_traces(args) -> None:
    defaults = load_params(REPO / "params.yaml").prover
    curves = prover_sim.r1_curves(args.simulated, seed=0)
    print(f"\n[adaptive, simulated R1-style traces] {len(curves)} traces, {sum(len(c) for c in curves)} prefixes "
          f"(5-40 episodes), K = {args.k}, shards of {defaults.shard_size}, in {args.populations} parts")
    size = -(-len(curves) // args.populations)
    for name, settings, fixed in schemes(args, defaults):
        start = time.perf_counter()
        results = [prover_sim.simulate(curves[i : i + size], settings, defaults.adaptive_initial, seed=3 + i,
                                       shard_size=defaults.shard_size, fixed=fixed) for i in range(0, len(curves), size)]
        report(name, results, time.perf_counter() - start)
    print("  (agreement: expected over 200 fixed-K pairs per trace with the known J; mean ± standard error over the parts)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--simulated", type=int, default=1000, help="simulated traces")
    parser.add_argument("--populations", type=int, default=5, help="parts the simulated traces are split into (for the error)")
    parser.add_argument("--replays", type=int, default=20, help="replays of the sampled traces' answer pool")
    parser.add_argument("--risks", type=lambda v: [float(x) for x in v.split(",")], default=[0.15, 0.35],
                        help="adaptive_risk values to compare (comma-separated)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--trace-tokens", type=int, default=5000)
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each prefix-reuse mode")
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
