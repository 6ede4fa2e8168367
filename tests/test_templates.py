from pipeline.templates import R1_FORCED_STOP, PromptBuilder


def test_prompt_ids_have_one_bos_and_the_think_tag(tokenizer):
    prompts = PromptBuilder(tokenizer, "chatml_think")
    ids = prompts.sampling_prompt_ids("Calculate 1 + 1.")
    assert ids[: len(prompts.sft_prompt_ids("Calculate 1 + 1."))] == prompts.sft_prompt_ids("Calculate 1 + 1.")
    text = tokenizer.decode(ids)
    assert text.endswith("<|im_start|>assistant\n<think>\n")
    assert text.count("Calculate 1 + 1.") == 1
    assert ids.count(tokenizer.bos_token_id) == text.count(tokenizer.bos_token)  # template tokens only


def test_r1_family_uses_the_paper_text(tokenizer):
    prompts = PromptBuilder(tokenizer, "r1")
    assert prompts.forced_stop_text == R1_FORCED_STOP
    assert prompts.messages("x")[0]["role"] == "user"
    assert "\\boxed{}" in prompts.messages("x")[0]["content"]
