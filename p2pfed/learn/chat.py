"""Instruction rows as chat conversations, rendered with the model's own chat template.

A row is a context (system / user / earlier assistant messages) and the final assistant answer. It is
rendered exactly as the instruct model saw its own fine-tuning data: the context with the template's
generation prompt (`<|im_start|>assistant\\n` for SmolLM2), then the answer and the template's end-of-turn
token. Only the answer tokens (end-of-turn included, so that the model learns to stop) carry loss;
earlier assistant turns of a multi-turn row are context, so no conversation is split between the test
set and a peer's shard.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pfed.errors import ConfigError, DataError
from p2pfed.types import Context, Message

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")


def parse_messages(value: object, where: str) -> tuple[Context, str]:
    """A `{"messages": [...]}` row's list -> (context, final assistant answer); DataError if malformed."""
    if not isinstance(value, list) or len(value) < 2:
        raise DataError(f"{where}: 'messages' must be a list of at least 2 {{role, content}} objects")
    messages: list[Message] = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(f"{where}: messages[{i}] must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: messages[{i}] role must be one of {ROLES}, got {role!r}")
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{where}: messages[{i}] content must be a non-empty string")
        messages.append((str(role), content))
    if messages[-1][0] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's answer (the training target)")
    if not any(role == "user" for role, _ in messages[:-1]):
        raise DataError(f"{where}: the messages need a user turn before the answer")
    return tuple(messages[:-1]), messages[-1][1]


def last_user(context: Context) -> str:
    """The final user message: what a row is shown as in samples and logs."""
    return next(content for role, content in reversed(context) if role == "user")


def _as_dicts(messages: Context) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in messages]


def _template_ids(tokenizer: PreTrainedTokenizerBase, messages: Context, *, generation: bool) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "instruction data needs a model with a chat template (an instruct model such as smollm2); "
            f"{type(tokenizer).__name__} has none"
        )
    text = tokenizer.apply_chat_template(
        _as_dicts(messages), tokenize=False, add_generation_prompt=generation
    )
    assert isinstance(text, str)
    # the template writes the special tokens itself: adding the tokenizer's own would double them
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer: PreTrainedTokenizerBase, context: Context) -> list[int]:
    """The context rendered up to and including the assistant's generation prompt (what `generate` feeds)."""
    return _template_ids(tokenizer, context, generation=True)


def render(
    tokenizer: PreTrainedTokenizerBase, context: Context, answer: str, max_tokens: int
) -> tuple[list[int], int]:
    """(token ids, prompt length): ids[prompt length:] are the answer tokens that carry the loss.

    Too long a row keeps at least half of `max_tokens` for the answer and drops the oldest prompt tokens:
    the generation prompt right before the answer must survive.
    """
    prompt = prompt_ids(tokenizer, context)
    full = _template_ids(tokenizer, (*context, ("assistant", answer)), generation=False)
    if full[: len(prompt)] != prompt:
        raise ConfigError("the chat template does not render a conversation as prompt + answer")
    answer_ids = full[len(prompt) :]
    eos = tokenizer.eos_token_id
    if eos in answer_ids:  # drop what the template writes after the end of the turn (a newline)
        answer_ids = answer_ids[: answer_ids.index(eos) + 1]
    keep = min(len(answer_ids), max(max_tokens // 2, max_tokens - len(prompt)))
    answer_ids = answer_ids[:keep]
    prompt = prompt[-(max_tokens - keep) :]
    return prompt + answer_ids, len(prompt)


def greedy_answer(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    context: Context,
    *,
    max_new_tokens: int = 64,
    streamer: object | None = None,
) -> str:
    """The model's greedy (deterministic) answer to `context`, stopping at the end-of-turn token.

    `streamer`: a transformers streamer (e.g. TextStreamer) that prints tokens as they are generated."""
    import torch

    ids = torch.tensor([prompt_ids(tokenizer, context)], dtype=torch.long)
    with torch.inference_mode():
        out = model.generate(  # type: ignore[operator]
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
            streamer=streamer,
        )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)).strip()
