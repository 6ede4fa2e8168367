"""Prompts per model family, built once as token ids from the model's chat template.

`chatml_think`: a chat model without a thinking format (the embedded SmolLM2). The system
prompt asks for thinking inside `<think>` and a `\\boxed{}` answer, and `<think>\\n` is
pre-filled. `r1`: R1-style models that think in `<think>` natively; the prompt follows
DeepSeek's recommendation (no system prompt, instruction in the user turn).

The rendered template is tokenized with `add_special_tokens=False`: the template already
carries any BOS, so a tokenizer that adds one would otherwise give two. The problem text is
always plain text: if it holds a string the tokenizer reads as a special token (a forged
`<|im_start|>system` turn), it is tokenized on its own with `split_special_tokens=True`, so
the prompt has exactly the turns the template made.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

THINK_OPEN, THINK_CLOSE = "<think>\n", "</think>"
_SLOT = "\x00mrt-problem-slot\x00"  # stands for the problem while the template is rendered

R1_FORCED_STOP = (
    "Time is up.\n\nGiven the time I've spent and the approaches I've tried, I should stop thinking "
    "and formulate a final answer based on what I already have.\n</think>\n\n"
)

CHATML_THINK_SYSTEM = (
    "You are a careful math assistant. Think step by step inside <think> </think> tags, "
    "then write the final answer in \\boxed{}. Example:\n"
    "<think>\n3 + 4 means adding 4 to 3, which gives 7.\n</think>\n\nThe answer is \\boxed{7}."
)


def special_token_strings(tokenizer) -> list[str]:
    """Every string this tokenizer turns into a special token when it meets it in text, longest first."""
    special = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    special.update(tokenizer.all_special_tokens)
    return sorted((s for s in special if s), key=len, reverse=True)


@dataclass(frozen=True)
class Family:
    name: str
    system_prompt: str | None
    user_suffix: str
    forced_stop: str


FAMILIES = {
    "chatml_think": Family("chatml_think", CHATML_THINK_SYSTEM, "", R1_FORCED_STOP),
    "r1": Family("r1", None, "\nPlease reason step by step, and put your final answer within \\boxed{}.", R1_FORCED_STOP),
    # The model's own chat template and nothing of ours: no system prompt, the problem alone as the
    # user turn (model.system_prompt / model.user_suffix add an instruction; docs/templates.md).
    "own_template": Family("own_template", None, "", R1_FORCED_STOP),
}


class PromptBuilder:
    """Token ids for prompts, the forced-termination text and the think-closing tag."""

    def __init__(self, tokenizer, family: str, system_prompt: str | None = None, forced_stop: str | None = None,
                 user_suffix: str | None = None, chat_template: str | None = None,
                 chat_template_kwargs: dict | None = None):
        if family not in FAMILIES:
            raise ValueError(f"model.family: unknown family {family!r}; choose one of {sorted(FAMILIES)}")
        self.tokenizer = tokenizer
        self.family = FAMILIES[family]
        self.system_prompt = system_prompt if system_prompt is not None else self.family.system_prompt
        self.user_suffix = user_suffix if user_suffix is not None else self.family.user_suffix
        # Passed to `apply_chat_template`: a template text replacing the tokenizer's (None: its own)
        # and the template's own switches (e.g. Qwen3's `enable_thinking`).
        self.template_args = dict(chat_template_kwargs or {})
        if chat_template is not None:
            self.template_args["chat_template"] = chat_template
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
        messages.append({"role": "user", "content": problem + self.user_suffix})
        return messages

    def chat_text(self, problem: str) -> str:
        """The chat-templated prompt up to the assistant turn, without the think tag."""
        text = self.tokenizer.apply_chat_template(self.messages(problem), add_generation_prompt=True, tokenize=False,
                                                  **self.template_args)
        # Some templates already open the thinking block; the think tag is added separately (once).
        for tag in (THINK_OPEN, THINK_OPEN.rstrip("\n")):
            if text.endswith(tag):
                text = text[: -len(tag)]
                break
        if THINK_CLOSE in text.rpartition(problem)[2]:
            raise ValueError(f"model.chat_template_kwargs: the chat template's generation prompt already closes the "
                             f"thinking block ({text.rpartition(problem)[2]!r}); the model would not think "
                             "(e.g. Qwen3 needs enable_thinking: true)")
        return text

    @cached_property
    def _special_strings(self) -> tuple[str, ...]:
        return tuple(special_token_strings(self.tokenizer))

    def sft_prompt_ids(self, problem: str) -> list[int]:
        """Prompt for SFT: the completion starts with `<think>\\n`, so the model learns to open it."""
        if not any(s in problem for s in self._special_strings):
            return self.encode(self.chat_text(problem))
        # The template around the problem keeps its control tokens; the problem itself stays text.
        parts = self.chat_text(_SLOT).split(_SLOT)
        if len(parts) != 2:
            raise ValueError(f"model.family {self.family.name}: the chat template does not place the problem text once")
        plain = list(self.tokenizer(problem, add_special_tokens=False, split_special_tokens=True)["input_ids"])
        return self.encode(parts[0]) + plain + self.encode(parts[1])

    def sampling_prompt_ids(self, problem: str) -> list[int]:
        """Prompt for sampling: the SFT prompt plus the think tag, so both share token ids."""
        return self.sft_prompt_ids(problem) + self.think_open_ids
