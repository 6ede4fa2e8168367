import torch

from pipeline.backends.base import Request, SamplingParams
from pipeline.backends.transformers_backend import TransformersBackend, common_prefix_length, sample_token
from pipeline.templates import PromptBuilder


def test_samples_do_not_depend_on_batching(tiny_model_dir, tokenizer):
    from pipeline.models import ModelRef, load_causal_lm

    model = load_causal_lm(ModelRef(str(tiny_model_dir)))
    prompts = PromptBuilder(tokenizer, "chatml_think")
    requests = [
        Request(prompts.sampling_prompt_ids(p), SamplingParams(n=2, temperature=1.0, top_p=0.9, max_tokens=12, seed=i))
        for i, p in enumerate(["Calculate 1 + 1.", "Calculate 2 + 3.", "What is 4 - 2?"])
    ]
    wide = TransformersBackend(model, tokenizer, batch_size=6).generate(requests)
    narrow = TransformersBackend(model, tokenizer, batch_size=1).generate(requests)
    assert [[c.token_ids for c in r] for r in wide] == [[c.token_ids for c in r] for r in narrow]
    for completions in wide:
        for completion in completions:
            assert 0 < completion.n_tokens <= 12
            assert completion.finish_reason in ("stop", "length")
            assert completion.text == tokenizer.decode(completion.token_ids, skip_special_tokens=False)
            assert tokenizer.eos_token_id not in completion.token_ids


def test_greedy_matches_transformers_generate(tiny_model_dir, tokenizer, tiny_backend):
    from pipeline.models import ModelRef, load_causal_lm

    model = load_causal_lm(ModelRef(str(tiny_model_dir)))
    ids = PromptBuilder(tokenizer, "chatml_think").sampling_prompt_ids("Calculate 1 + 1.")
    ours = tiny_backend.generate([Request(ids, SamplingParams(n=1, temperature=0, max_tokens=10))])[0][0]
    reference = model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)[0, len(ids):].tolist()
    reference = [t for t in reference if t != tokenizer.eos_token_id]
    assert ours.token_ids == reference[: len(ours.token_ids)]


def test_prefix_reuse_saves_prefill(tiny_backend):
    base = list(range(100, 160))
    requests = [Request(base[:n] + [7, 8], SamplingParams(n=2, max_tokens=2, seed=n)) for n in (20, 40, 60)]
    before_prompt, before_prefill = tiny_backend.stats.prompt_tokens, tiny_backend.stats.prefill_tokens
    tiny_backend.generate(requests)
    naive = tiny_backend.stats.prompt_tokens - before_prompt
    computed = tiny_backend.stats.prefill_tokens - before_prefill
    assert naive == 22 + 42 + 62
    assert computed == 22 + 22 + 22  # each prefix reuses the previous one up to the shared part


def test_stop_strings_cut_the_text(tiny_backend, tokenizer):
    ids = PromptBuilder(tokenizer, "chatml_think").sampling_prompt_ids("Calculate 1 + 1.")
    completion = tiny_backend.generate([Request(ids, SamplingParams(n=1, temperature=0, max_tokens=40, stop=("</think>",)))])[0][0]
    assert "</think>" not in completion.text and completion.finish_reason == "stop"


def test_nucleus_sampling_keeps_to_the_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    drawn = {sample_token(logits, 1.0, 0.7, torch.Generator().manual_seed(s)) for s in range(200)}
    assert drawn == {0, 1}
    assert common_prefix_length((1, 2, 3), (1, 2, 4)) == 2 and common_prefix_length((1,), (1, 2)) == 1


def test_shared_prefix_decoding_matches_full_attention(tiny_model_dir, tokenizer):
    """Cascade attention over (shared prompt KV, own tokens) gives the logits of a full forward pass."""
    from pipeline.backends.transformers_backend import TransformersBackend
    from pipeline.models import ModelRef, load_causal_lm

    reference = load_causal_lm(ModelRef(str(tiny_model_dir)))
    backend = TransformersBackend(load_causal_lm(ModelRef(str(tiny_model_dir))), tokenizer, batch_size=8)
    prompts = [tuple(range(300, 340)), tuple(range(300, 317)) + (5, 6)]
    entries = [backend._prefill(p) for p in prompts]
    rows = [entries[0], entries[1], entries[0], entries[1], entries[0]]  # 3 samples of one, 2 of the other
    cache = backend._batched_cache(rows, extra=4)
    continuations = [[11, 12], [13, 14], [15, 16], [17, 18], [19, 20]]
    positions = torch.tensor([[e.length] for e in rows])
    with torch.inference_mode():
        for step in range(2):
            ids = torch.tensor([[c[step]] for c in continuations])
            logits = backend.model(input_ids=ids, position_ids=positions + step, past_key_values=cache, use_cache=True).logits[:, -1]
        for row, (entry, tail) in enumerate(zip(rows, continuations)):
            prompt = prompts[0] if entry is entries[0] else prompts[1]
            full = reference(input_ids=torch.tensor([list(prompt) + tail])).logits[0, -1]
            assert torch.allclose(logits[row], full, atol=1e-4), row
