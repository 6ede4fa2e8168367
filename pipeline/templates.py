"""Prompts per model family, built once as token ids from the model's chat template.

`chatml_think`: a chat model without a thinking format (the embedded SmolLM2). The system
prompt asks for thinking inside `<think>` and a `\\boxed{}` answer, and `<think>\\n` is
pre-filled. `r1`: R1-style models that think in `<think>` natively; the prompt follows
DeepSeek's recommendation (no system prompt, instruction in the user turn).

The rendered template is tokenized with `add_special_tokens=False`: the template already
carries any BOS, so a tokenizer that adds one would otherwise give two.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>\n", "</think>"

R1_FORCED_STOP = (
    "Time is up.\n\nGiven the time I've spent and the approaches I've tried, I should stop thinking "
    "and formulate a final answer based on what I already have.\n</think>\n\n"
)

CHATML_THINK_SYSTEM = (
    "You are a careful math assistant. Think step by step inside <think> </think> tags, "
    "then write the final answer in \\boxed{}. Example:\n"
    "<think>\n3 + 4 means adding 4 to 3, which gives 7.\n</think>\n\nThe answer is \\boxed{7}."
)


@dataclass(frozen=True)
class Family:
    name: str
    system_prompt: str | None
    user_suffix: str
    forced_stop: str


FAMILIES = {
    "chatml_think": Family("chatml_think", CHATML_THINK_SYSTEM, "", R1_FORCED_STOP),
    "r1": Family("r1", None, "\nPlease reason step by step, and put your final answer within \\boxed{}.", R1_FORCED_STOP),
}


class PromptBuilder:
    """Token ids for prompts, the forced-termination text and the think-closing tag."""

    def __init__(self, tokenizer, family: str, system_prompt: str | None = None, forced_stop: str | None = None):
        if family not in FAMILIES:
            raise ValueError(f"model.family: unknown family {family!r}; choose one of {sorted(FAMILIES)}")
        self.tokenizer = tokenizer
        self.family = FAMILIES[family]
        self.system_prompt = system_prompt if system_prompt is not None else self.family.system_prompt
        self.forced_stop_text = forced_stop if forced_stop is not None else self.family.forced_stop
        self.forced_stop_ids = self.encode(self.forced_stop_text)
        self.close_text = THINK_CLOSE + "\n\n"
        self.close_ids = self.encode(self.close_text)
        self.think_open_ids = self.encode(THINK_OPEN)
        self.eos_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def messages(self, problem: str) -> list[dict[str, str]]:
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": problem + self.family.user_suffix})
        return messages

    def chat_text(self, problem: str) -> str:
        """The chat-templated prompt up to the assistant turn, without the think tag."""
        text = self.tokenizer.apply_chat_template(self.messages(problem), add_generation_prompt=True, tokenize=False)
        # Some R1 templates already open the thinking block; the think tag is added separately.
        return text[: -len(THINK_OPEN)] if text.endswith(THINK_OPEN) else text

    def sft_prompt_ids(self, problem: str) -> list[int]:
        """Prompt for SFT: the completion starts with `<think>\\n`, so the model learns to open it."""
        return self.encode(self.chat_text(problem))

    def sampling_prompt_ids(self, problem: str) -> list[int]:
        """Prompt for sampling: the SFT prompt plus the think tag, so both share token ids."""
        return self.sft_prompt_ids(problem) + self.think_open_ids
