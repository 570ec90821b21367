"""How a conversation becomes token ids, and which ids end an answer: one rule for the decoder,
the bench and the data pipeline.

A conversation is rendered with the tokenizer's chat template when it has one; otherwise (base
models such as Gemma-3-270M have none) with the plain layout 'User: ...\\nAssistant: ...\\n' and
a trailing 'Assistant:' to ask for an answer. A chat template writes its own BOS; the plain layout
gets the tokenizer's usual special tokens.

This module sits at the bottom of the package (beside config): it imports nothing of ours.
"""

from __future__ import annotations

from typing import Any

import torch

ROLES = ("system", "user", "assistant")
PLAIN_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}

Messages = list[dict[str, str]]


def plain_text(messages: Messages, add_generation_prompt: bool) -> str:
    """The plain layout for tokenizers without a chat template."""
    text = "".join(f"{PLAIN_NAMES[m['role']]}: {m['content']}\n" for m in messages)
    return text + "Assistant:" if add_generation_prompt else text


def uses_template(tokenizer: Any, use_template: bool = True) -> bool:
    return bool(use_template and getattr(tokenizer, "chat_template", None))


def with_system(messages: Messages, system_prompt: str = "") -> Messages:
    """Prepend `system_prompt` unless it is empty or the conversation already opens with a system turn."""
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return list(messages)


def render_text(tokenizer: Any, messages: Messages, add_generation_prompt: bool, template: bool) -> str:
    """The conversation as text: the chat template, or the plain layout."""
    if not template:
        return plain_text(messages, add_generation_prompt)
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as e:  # jinja raise_exception(), missing keys…: the template refuses this conversation
        raise ValueError(f"chat template refused the conversation: {e}") from None


def encode(tokenizer: Any, text: str, template: bool, offsets: bool = False) -> Any:
    """Tokenize rendered text: no added specials after a chat template (it wrote its own BOS)."""
    return tokenizer(text, add_special_tokens=not template, return_offsets_mapping=offsets)


def render(tokenizer: Any, messages: Messages, use_template: bool = True, system_prompt: str = "") -> torch.Tensor:
    """Token ids [1, n] of a conversation ending in a user turn, ready for the assistant's answer.

    The same ids as `tokenizer.apply_chat_template(..., add_generation_prompt=True, tokenize=True)`
    when the tokenizer has a template and `use_template` is set.
    """
    template = uses_template(tokenizer, use_template)
    text = render_text(tokenizer, with_system(messages, system_prompt), True, template)
    return torch.tensor([list(encode(tokenizer, text, template).input_ids)], dtype=torch.long)


def end_ids(*sources: Any) -> set[int]:
    """Every `eos_token_id` (one id or a list) that the given configs and tokenizers declare."""
    ids: set[int] = set()
    for src in sources:
        value = getattr(src, "eos_token_id", None) if src is not None else None
        if value is not None:
            ids.update(value if isinstance(value, (list, tuple)) else [value])
    return ids


def eos_ids(base: Any) -> set[int]:
    """The ids that end an answer of `base` (a BaseModel): its generation config's, its config's
    and its tokenizer's end-of-sequence ids together."""
    return end_ids(getattr(base.model, "generation_config", None), base.config, base.tokenizer)
