"""A model's own chat template as parameters: `model.chat_template` and `model.chat_template_kwargs`.

A new thinking model should need parameters, not code: its tokenizer's template (or one given
as text or a file) is rendered with the switches it defines (Qwen3's `enable_thinking`),
by `PromptBuilder` (`pipeline.templates`). This module only reads and checks those values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# `apply_chat_template` arguments the pipeline sets itself: as template switches they would
# change what a prompt is (token ids, a continued turn) behind the prompt builder's back.
RESERVED = frozenset({
    "conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
    "continue_final_message", "tokenize", "padding", "truncation", "max_length", "return_tensors",
    "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs",
})


def check_template_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The switches a template reads; a key the pipeline sets itself is refused, by name."""
    clash = sorted(RESERVED.intersection(kwargs))
    if clash:
        raise ValueError(f"{', '.join(clash)}: set by the pipeline, not a template switch "
                         "(use model.chat_template for a template of your own)")
    return kwargs


def load_chat_template(value: str | None) -> str | None:
    """Template text from `model.chat_template`: Jinja text as is, otherwise a file holding it
    (a `.jinja` file, or a JSON tokenizer config's `chat_template`). None keeps the tokenizer's."""
    if value is None:
        return None
    if "{{" in value or "{%" in value:
        return value
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"model.chat_template: {value!r} is neither a Jinja template (no '{{{{' or '{{%') "
                         "nor an existing file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"model.chat_template: cannot read {path}: {error}") from None
    if path.suffix == ".json":
        import json

        try:
            text = json.loads(text)["chat_template"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"model.chat_template: {path} is JSON without a 'chat_template' text") from None
        if not isinstance(text, str):
            raise ValueError(f"model.chat_template: {path}: 'chat_template' is not a single template text")
    if not text.strip():
        raise ValueError(f"model.chat_template: {path} is empty")
    return text
