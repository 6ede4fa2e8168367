import torch

from pipeline.backends.base import Request, SamplingParams
from pipeline.backends.shared_prefix import SharedPrefixBatch
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


def test_rows_leaving_the_batch_early_change_no_sample(tiny_model_dir, tokenizer):
    """Rows that finish early leave the decoding batch; the others' tokens stay those of one-row batches."""
    from pipeline.models import ModelRef, load_causal_lm

    model = load_causal_lm(ModelRef(str(tiny_model_dir)))
    prompts = PromptBuilder(tokenizer, "chatml_think")
    requests = [
        Request(prompts.sampling_prompt_ids(p), SamplingParams(n=2, temperature=1.0, top_p=0.9, max_tokens=budget, seed=i))
        for i, (p, budget) in enumerate([("Calculate 1 + 1.", 14), ("Calculate 2 + 3.", 3), ("What is 4 - 2?", 8)])
    ]
    wide = TransformersBackend(model, tokenizer, batch_size=6).generate(requests)
    narrow = TransformersBackend(model, tokenizer, batch_size=1).generate(requests)
    assert [[c.token_ids for c in r] for r in wide] == [[c.token_ids for c in r] for r in narrow]
    assert [[c.n_tokens for c in r] for r in wide] == [[14, 14], [3, 3], [8, 8]]  # random weights: no EOS


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


def test_packed_prefill_matches_one_prompt_at_a_time(tiny_model_dir, tokenizer):
    """Prompts prefilled in one forward pass (a cached donor, donors inside the pack, an unrelated
    prompt) get the KV cache and next-token logits of prefilling them one by one."""
    from pipeline.models import ModelRef, load_causal_lm

    model = load_causal_lm(ModelRef(str(tiny_model_dir)))
    base = list(range(300, 380))
    prompts = [tuple(base[:cut] + [7, 8, 9]) for cut in (20, 35, 50, 80)] + [tuple(range(900, 930)), tuple(base[:35] + [7])]
    one_by_one, packed = TransformersBackend(model, tokenizer), TransformersBackend(model, tokenizer)
    for ids in prompts:
        one_by_one._prefill(ids)
    packed._prefill(prompts[0])
    packed._prefill_pack(prompts)
    assert packed.stats.prefill_passes == 2 and one_by_one.stats.prefill_passes == len(prompts)
    assert packed.stats.prefill_tokens == one_by_one.stats.prefill_tokens  # the same reuse, fewer passes
    for ids in prompts:
        alone, together = one_by_one._prefix_cache[ids], packed._prefix_cache[ids]
        assert together.length == len(ids)
        torch.testing.assert_close(together.last_logits, alone.last_logits, rtol=1e-4, atol=1e-4)
        for (k1, v1), (k2, v2) in zip(alone.kv, together.kv):
            torch.testing.assert_close(k2, k1, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(v2, v1, rtol=1e-4, atol=1e-4)


def test_packs_follow_the_prompts_not_the_batching():
    """Packs group distinct prompts in request order by estimated new tokens and a prompt count."""
    from pipeline.backends.transformers_backend import plan_packs

    base = tuple(range(1000))
    prefixes = [base[:cut] + (7,) for cut in range(100, 1000, 100)]  # 101 new tokens each: 3 fit in 350
    packs = plan_packs(prefixes + prefixes[:2], budget=350, most=16)  # repeated prompts are prefilled once
    assert [packs[p] for p in prefixes] == [prefixes[0:3]] * 3 + [prefixes[3:6]] * 3 + [prefixes[6:9]] * 3
    assert [len(plan_packs(prefixes, budget=10**6, most=4)[p]) for p in prefixes] == [4] * 8 + [1]


def test_prefix_cache_outlives_a_call_within_its_token_bound(tiny_model_dir, tokenizer):
    """A call that continues the previous call's prompt (budget forcing's answer after its
    continuation) prefills only the new tokens; past `prefix_cache_tokens` the oldest prompts go."""
    from pipeline.models import ModelRef, load_causal_lm

    backend = TransformersBackend(load_causal_lm(ModelRef(str(tiny_model_dir))), tokenizer, batch_size=4,
                                  prefix_cache_tokens=100)
    base = list(range(200, 260))
    backend.generate([Request(base, SamplingParams(n=1, max_tokens=2, seed=0))])
    before = backend.stats.prefill_tokens
    backend.generate([Request(base + [7, 8, 9], SamplingParams(n=2, max_tokens=2, seed=0))])
    assert backend.stats.prefill_tokens - before == 3
    assert list(backend._prefix_cache) == [tuple(base + [7, 8, 9])]  # 60 + 63 tokens > 100: the older one went
    backend.generate([Request(list(range(600, 620)), SamplingParams(n=1, max_tokens=2, seed=0))])
    assert [len(key) for key in backend._prefix_cache] == [63, 20]


def test_stop_strings_cut_the_text(tiny_backend, tokenizer):
    ids = PromptBuilder(tokenizer, "chatml_think").sampling_prompt_ids("Calculate 1 + 1.")
    completion = tiny_backend.generate([Request(ids, SamplingParams(n=1, temperature=0, max_tokens=40, stop=("</think>",)))])[0][0]
    assert "</think>" not in completion.text and completion.finish_reason == "stop"


def test_nucleus_sampling_keeps_to_the_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    drawn = {sample_token(logits, 1.0, 0.7, torch.Generator().manual_seed(s)) for s in range(200)}
    assert drawn == {0, 1}
    assert common_prefix_length((1, 2, 3), (1, 2, 4)) == 2 and common_prefix_length((1,), (1, 2)) == 1


def _one_row_reference(logits, temperature, top_p, generator) -> int:
    """Temperature + nucleus sampling of one row, written from the definition: the smallest set of
    most likely tokens whose mass reaches top_p, renormalized."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p >= 1.0:
        return int(torch.multinomial(probs, 1, generator=generator))
    values, indices = torch.sort(probs, descending=True)
    values = values.masked_fill(torch.cumsum(values, dim=-1) - values > top_p, 0.0)
    return int(indices[torch.multinomial(values, 1, generator=generator)])


def test_batched_sampling_draws_what_each_row_draws_alone():
    """One softmax and partial sort for the batch; each row's token equals a one-row draw with its
    own settings and generator (peaked, flat and tied rows, greedy and no-nucleus rows)."""
    from pipeline.backends.transformers_backend import sample_tokens

    torch.manual_seed(0)
    logits = torch.randn(12, 3000) * torch.tensor([1.0, 3.0, 20.0] * 4)[:, None]
    logits[3, :50] = 5.0  # a tied plateau
    logits[4] = 0.0  # flat: the nucleus needs more than the first candidates
    temperatures = [0.7, 1.0, 0.7, 1.3, 0.7, 0.0, 0.7, 1.0, 0.7, 0.7, 0.5, 0.7]
    top_ps = [0.95, 0.9, 0.95, 0.95, 0.999, 0.95, 1.0, 0.5, 0.95, 0.95, 0.95, 0.7]
    for seed in range(20):
        batched = sample_tokens(logits, temperatures, top_ps, [torch.Generator().manual_seed(seed + i) for i in range(12)])
        alone = [_one_row_reference(logits[i], temperatures[i], top_ps[i], torch.Generator().manual_seed(seed + i))
                 for i in range(12)]
        assert batched == alone


def test_shared_prefix_decoding_matches_full_attention(tiny_model_dir, tokenizer):
    """Cascade attention over (shared prompt KV, own tokens) gives the logits of a full forward pass."""
    from pipeline.backends.transformers_backend import TransformersBackend
    from pipeline.models import ModelRef, load_causal_lm

    reference = load_causal_lm(ModelRef(str(tiny_model_dir)))
    backend = TransformersBackend(load_causal_lm(ModelRef(str(tiny_model_dir))), tokenizer, batch_size=8)
    prompts = [tuple(range(300, 340)), tuple(range(300, 317)) + (5, 6)]
    entries = [backend._prefill(p) for p in prompts]
    rows = [entries[0], entries[1], entries[0], entries[1], entries[0]]  # 3 samples of one, 2 of the other
    batch = SharedPrefixBatch(capacity=4)
    batch.rebuild([], [(entry, entry.kv) for entry in rows])
    cache = batch.cache
    continuations = [[11, 12], [13, 14], [15, 16], [17, 18], [19, 20]]
    positions = torch.tensor([[e.length] for e in rows])
    with torch.inference_mode():
        for step in range(2):
            ids = torch.tensor([[c[step]] for c in continuations])
            logits = backend.model(input_ids=ids, position_ids=positions + step, past_key_values=cache, use_cache=True).logits[:, -1]
            batch.advance(torch.ones(len(rows), dtype=torch.bool))
        for row, (entry, tail) in enumerate(zip(rows, continuations)):
            prompt = prompts[0] if entry is entries[0] else prompts[1]
            full = reference(input_ids=torch.tensor([list(prompt) + tail])).logits[0, -1]
            assert torch.allclose(logits[row], full, atol=1e-4), row


def test_rows_leaving_and_joining_keep_cascade_attention_exact(tiny_model_dir, tokenizer):
    """Continuous batching: after `rebuild` drops finished rows (and with them a whole prompt, the
    longest, whose left padding goes too) and adds rows of a new prompt, every row's logits still
    equal a full forward pass of its own prompt and tokens."""
    from pipeline.models import ModelRef, load_causal_lm

    reference = load_causal_lm(ModelRef(str(tiny_model_dir)))
    backend = TransformersBackend(load_causal_lm(ModelRef(str(tiny_model_dir))), tokenizer, batch_size=8)
    prompts = [tuple(range(300, 340)), tuple(range(300, 317)) + (5, 6), tuple(range(400, 425)), tuple(range(500, 530))]
    entries = [backend._prefill(p) for p in prompts]
    batch = SharedPrefixBatch(capacity=5)
    row_prompts = [0, 1, 0, 2, 1, 2]
    batch.rebuild([], [(entries[g], entries[g].kv) for g in row_prompts])
    fed = {row: [] for row in range(8)}  # row id -> tokens it fed
    alive = list(range(6))  # row id of each batch row
    with torch.inference_mode():
        for step in range(4):
            if step == 2:  # rows 0, 2 (all of prompt 0, the longest) and 3 finish; two rows of prompt 3 join
                keep = [position for position, row in enumerate(alive) if row not in (0, 2, 3)]
                batch.rebuild(keep, [(entries[3], entries[3].kv), (entries[3], entries[3].kv)])
                alive = [alive[position] for position in keep] + [6, 7]
                row_prompts += [3, 3]
                layer = batch.cache.layers[0]
                assert layer.prefix_keys.shape[0] == 3  # prompts 1, 2 and 3
                assert layer.prefix_keys.shape[2] == 30  # padded to prompt 3's length, not prompt 0's 40
            ids = torch.tensor([[11 + 10 * row + step] for row in alive])
            positions = torch.tensor([[len(prompts[row_prompts[row]]) + len(fed[row])] for row in alive])
            logits = backend.model(input_ids=ids, position_ids=positions, past_key_values=batch.cache, use_cache=True).logits[:, -1]
            batch.advance(torch.ones(len(alive), dtype=torch.bool))
            for row in alive:
                fed[row].append(11 + 10 * row + step)
        for position, row in enumerate(alive):
            full = reference(input_ids=torch.tensor([list(prompts[row_prompts[row]]) + fed[row]])).logits[0, -1]
            assert torch.allclose(logits[position], full, atol=1e-4), row


def test_fused_cpu_attention_and_the_plain_ops_agree(monkeypatch):
    """The cascade's two parts use PyTorch's fused CPU kernel where it exists; the plain-op path
    (GPUs, other builds) gives the same output and log-sum-exp, left padding masked in both."""
    from pipeline.backends import shared_prefix

    torch.manual_seed(0)
    query, keys, values = torch.randn(4, 3, 6, 16), torch.randn(4, 3, 20, 16), torch.randn(4, 3, 20, 16)
    allowed = torch.ones(4, 20, dtype=torch.bool)
    allowed[1, :7] = allowed[3, :19] = False  # left padding; one prompt of a single token
    bias = shared_prefix._bias(allowed, torch.float32)
    fused = shared_prefix._attend(query, keys, values, bias, 0.25)
    monkeypatch.setattr(shared_prefix, "_FUSED_CPU", None)
    plain = shared_prefix._attend(query, keys, values, bias, 0.25)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    scores = (query @ keys.transpose(-1, -2)) * 0.25  # and both are softmax attention over the allowed keys
    expected = torch.softmax(scores.masked_fill(~allowed[:, None, None, :], float("-inf")), dim=-1) @ values
    torch.testing.assert_close(plain[0], expected, rtol=1e-5, atol=1e-5)


def test_prompt_slots_are_reused_in_place_and_grow_only_when_they_must(tiny_model_dir, tokenizer, monkeypatch):
    """Rows of six prompts leave and join over five rebuilds. A finished prompt's slot is taken by a
    new prompt (or by a kept one moved from the tail) without reallocating the buffer; it grows only
    for a prompt longer than it or for more prompts than its slots; and after every rebuild each
    row's logits are those of a full forward pass of its own prompt and tokens, with the buffer's
    unwritten memory full of NaN (the masked padding must still be zeroed)."""
    from pipeline.models import ModelRef, load_causal_lm

    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, shape: self.new_full(shape, float("nan")))

    reference = load_causal_lm(ModelRef(str(tiny_model_dir)))
    backend = TransformersBackend(load_causal_lm(ModelRef(str(tiny_model_dir))), tokenizer, batch_size=8)
    prompts = [tuple(range(300, 340)), tuple(range(300, 317)) + (5, 6), tuple(range(400, 425)), tuple(range(500, 530)),
               tuple(range(600, 650)), tuple(range(700, 712))]
    entries = [backend._prefill(p) for p in prompts]
    batch = SharedPrefixBatch(capacity=6)
    alive: list[int] = []  # row id of each batch row
    row_prompt: dict[int, int] = {}
    fed: dict[int, list[int]] = {}
    # (rows that finish, prompts of the rows that join, whether the buffer must grow)
    schedule = [((), (0, 1, 0, 2), True), ((0, 2), (3, 3), False), ((1,), (4,), True), ((), (5, 5, 2, 1), True), ((4, 5, 6), (), False)]
    with torch.inference_mode():
        for finishing, joining, grows in schedule:
            before = batch._buffers[0][0].data_ptr() if batch._buffers else None
            keep = [position for position, row in enumerate(alive) if row not in finishing]
            batch.rebuild(keep, [(entries[g], entries[g].kv) for g in joining], width=40)
            alive = [alive[position] for position in keep]
            for g in joining:
                row_prompt[len(row_prompt)] = g
                fed[len(fed)] = []
                alive.append(len(row_prompt) - 1)
            assert (batch._buffers[0][0].data_ptr() != before) == grows
            layer = batch.cache.layers[0]
            live_prompts = {row_prompt[row] for row in alive}
            assert layer.prefix_keys.shape[0] == len(live_prompts)  # one slot per prompt with rows
            assert layer.prefix_keys.shape[2] == max(len(prompts[g]) for g in live_prompts)  # as wide as the longest
            ids = torch.tensor([[11 + 10 * row + len(fed[row])] for row in alive])
            positions = torch.tensor([[len(prompts[row_prompt[row]]) + len(fed[row])] for row in alive])
            logits = backend.model(input_ids=ids, position_ids=positions, past_key_values=batch.cache, use_cache=True).logits[:, -1]
            batch.advance(torch.ones(len(alive), dtype=torch.bool))
            for position, row in enumerate(alive):
                fed[row].append(int(ids[position, 0]))
                full = reference(input_ids=torch.tensor([list(prompts[row_prompt[row]]) + fed[row]])).logits[0, -1]
                assert torch.allclose(logits[position], full, atol=1e-4), (row, fed[row])


def test_a_prefill_on_a_reused_prefix_matches_one_from_scratch(tiny_model_dir, tokenizer):
    """A prompt prefilled on top of a cached prompt's KV (folded attention under the offset causal
    mask) gets the KV cache and logits of prefilling it whole: one new token, and several."""
    from pipeline.models import ModelRef, load_causal_lm

    model = load_causal_lm(ModelRef(str(tiny_model_dir)))
    reused, whole = TransformersBackend(model, tokenizer), TransformersBackend(model, tokenizer, reuse_prefixes=False)
    first = tuple(range(300, 340)) + (7, 8, 9)
    prompts = [first, first + (10,), tuple(range(300, 355)) + (7, 8)]
    for ids in prompts:
        reused._prefill(ids)
        whole._prefill(ids)
    assert reused.stats.prefill_tokens == 43 + 1 + 17 and whole.stats.prefill_tokens == 43 + 44 + 57
    for ids in prompts:
        split, plain = reused._prefix_cache[ids], whole._prefix_cache[ids]
        torch.testing.assert_close(split.last_logits, plain.last_logits, rtol=1e-4, atol=1e-4)
        for (k1, v1), (k2, v2) in zip(plain.kv, split.kv):
            torch.testing.assert_close(k2, k1, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(v2, v1, rtol=1e-4, atol=1e-4)


def test_folded_prefill_attention_is_sdpa_bit_for_bit(monkeypatch):
    """A masked prefill's attention with the query heads of a key head folded into its rows equals
    softmax attention under the mask computed from the definition, and equals transformers' SDPA
    path (keys copied per query head) bit for bit: a prefill on cached KV (causal mask offset by
    the cached length) and a packed one (a block mask), one new token and several; off CPU the
    plain SDPA path is taken."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from pipeline.backends import shared_prefix

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True)
    kernel = shared_prefix._FUSED_CPU
    assert kernel is not None  # the CPU build CI runs has it
    block = torch.ones(6, 6, dtype=torch.bool).tril()
    block[3:, :3] = False  # two packed prompts of 3 new tokens each, after 30 cached tokens
    cases = [(1, torch.arange(31)[None, :] <= torch.arange(30, 31)[:, None]),
             (5, torch.arange(35)[None, :] <= torch.arange(30, 35)[:, None]),
             (6, torch.cat([torch.ones(6, 30, dtype=torch.bool), block], 1))]
    for new, allowed in cases:
        cached_k, cached_v = torch.randn(1, 2, 30, 16), torch.randn(1, 2, 30, 16)
        new_k, new_v, query = torch.randn(1, 2, new, 16), torch.randn(1, 2, new, 16), torch.randn(1, 4, new, 16)
        keys, values = torch.cat([cached_k, new_k], 2), torch.cat([cached_v, new_v], 2)
        scores = (query @ keys.repeat_interleave(2, 1).transpose(-1, -2)) * 0.25
        expected = (torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ values.repeat_interleave(2, 1)).transpose(1, 2)
        sdpa, _ = sdpa_attention_forward(module, query, keys, values, allowed[None, None], scaling=0.25)
        for fused in (kernel, None):
            monkeypatch.setattr(shared_prefix, "_FUSED_CPU", fused)
            cache = shared_prefix.extending_cache([(cached_k, cached_v)])
            marker, _ = cache.layers[0].update(new_k, new_v)
            out, _ = shared_prefix.shared_prefix_attention(module, query, marker, marker, allowed[None, None], scaling=0.25)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
            assert torch.equal(out, sdpa)
