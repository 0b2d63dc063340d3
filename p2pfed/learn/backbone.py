"""A base model cut in two: frozen lower layers (run once per row, see features.py) and the adapted top.

Two families:
- `EncoderBackbone`: BERT-like `...ForSequenceClassification`; logits = classifier(pooler(top(h))).
- `CausalBackbone`: Llama-like `...ForCausalLM`; classification scores the first token of each label name
  after a prompt, instruction data is scored by the LM loss on the response tokens.
Both keep the model in eval mode: dropout is off in training too, so a step is deterministic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from p2pfed.errors import ConfigError
from p2pfed.learn.chat import Context, render

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Batch:
    """A padded batch (dynamic padding: T is the longest row of this batch)."""

    ids: torch.Tensor  # (B, T) token ids, 0 where padded
    mask: torch.Tensor  # (B, T) 1 for real tokens
    lengths: torch.Tensor  # (B,)
    prompt_lens: torch.Tensor  # (B,) instruction data: tokens before the response; else 0
    hidden: torch.Tensor | None = None  # (B, T, h) output of the frozen lower layers, if cached


@dataclass
class Encoded:
    """Token ids of every row of a task (no padding)."""

    ids: list[npt.NDArray[np.int64]]
    prompt_lens: npt.NDArray[np.int64]

    @property
    def lengths(self) -> npt.NDArray[np.int64]:
        return np.asarray([len(x) for x in self.ids], dtype=np.int64)


class EncoderBackbone:
    kind = "encoder"
    lora_targets = ("query", "key", "value")
    head_modules = ("classifier",)

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, adapt_layers: int
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.num_layers = int(self.config.num_hidden_layers)
        if not 1 <= adapt_layers <= self.num_layers:
            raise ConfigError(f"adapt_layers must be in 1..{self.num_layers}, got {adapt_layers}")
        self.split = self.num_layers - adapt_layers
        prefix = model.base_model_prefix
        self._base = getattr(model, prefix)
        if not hasattr(self._base, "encoder") or not hasattr(self._base, "pooler"):
            raise ConfigError(f"{type(model).__name__}: only BERT-like encoders are supported")
        self.layer_regex = rf"{prefix}\.encoder\.layer"

    def encode(self, texts: tuple[str, ...], max_tokens: int) -> Encoded:
        out = self.tokenizer(list(texts), truncation=True, max_length=max_tokens)
        ids = [np.asarray(x, dtype=np.int64) for x in out["input_ids"]]
        return Encoded(ids, np.zeros(len(ids), dtype=np.int64))

    def _run(self, hidden: torch.Tensor, mask: torch.Tensor, layers: range) -> torch.Tensor:
        # nothing to run, no mask to build (its data-dependent shortcut would also stop torch.func.vmap)
        if not layers:
            return hidden
        mask4 = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=mask
        )
        for i in layers:
            hidden = self._base.encoder.layer[i](hidden, mask4)
        return hidden

    def lower(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self._base.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
        return self._run(hidden, mask, range(self.split))

    @property
    def top_layer(self) -> torch.nn.Module:
        return self._base.encoder.layer[self.num_layers - 1]

    @property
    def pooler(self) -> torch.nn.Module:
        return self._base.pooler

    def upper(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Output of the top layers at the first token only (all the pooler reads)."""
        hidden = self._run(hidden, mask, range(self.split, self.num_layers - 1))
        return self._first_token_layer(self.top_layer, hidden, mask)

    def _first_token_layer(
        self, layer: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """A BertLayer computed for the first token only: keys and values need every token, the
        query, attention output and feed-forward only the first (~4x less work for the last layer)."""
        # its submodules are reached by name: torch types each one `Tensor | Module` only
        bert_layer: Any = layer
        attention = bert_layer.attention.self
        b, t, _ = hidden.shape
        heads, size = attention.num_attention_heads, attention.attention_head_size
        first = hidden[:, :1]
        q = attention.query(first).view(b, 1, heads, size).transpose(1, 2)
        k = attention.key(hidden).view(b, t, heads, size).transpose(1, 2)
        v = attention.value(hidden).view(b, t, heads, size).transpose(1, 2)
        keep = mask[:, None, None, :].bool()
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=attention.scaling)
        context = context.transpose(1, 2).reshape(b, 1, heads * size)
        attended = bert_layer.attention.output(context, first)
        return bert_layer.output(bert_layer.intermediate(attended), attended)

    def class_logits(self, top: torch.Tensor, batch: Batch) -> torch.Tensor:
        return cast(torch.nn.Module, self.model.classifier)(self._base.pooler(top))


# bf16 matmuls run natively (oneDNN on AMX / AVX512-BF16), not emulated; P2PFED_FP32_HEAD=1 turns it off
BF16_MATMUL = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and os.environ.get("P2PFED_FP32_HEAD") != "1"


class CausalBackbone:
    kind = "causal"
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    head_modules: tuple[str, ...] = ()  # the LM head stays frozen: label tokens are scored with it

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        adapt_layers: int,
        label_names: tuple[str, ...],
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.num_layers = int(self.config.num_hidden_layers)
        if not 1 <= adapt_layers <= self.num_layers:
            raise ConfigError(f"adapt_layers must be in 1..{self.num_layers}, got {adapt_layers}")
        self.split = self.num_layers - adapt_layers
        self._base = model.model
        self.layer_regex = r"model\.layers"
        self.label_names = label_names
        self.label_tokens = torch.tensor(
            [self._ids(" " + name)[0] for name in label_names], dtype=torch.long
        )
        if len(set(self.label_tokens.tolist())) != len(label_names):
            raise ConfigError(f"label names {label_names} do not start with distinct tokens")
        self._head_bf16: torch.Tensor | None = None  # the frozen LM head in bfloat16, see response_losses

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prompt(self, text: str) -> tuple[str, str]:
        return f"Text: {text}", f"\nCategory ({', '.join(self.label_names)}):"

    def encode(self, texts: tuple[str, ...], max_tokens: int) -> Encoded:
        """Classification rows: the text, then the question naming the labels (scored by class_logits)."""
        rows = []
        for text in texts:
            head, tail = (self._ids(s) for s in self._prompt(text))
            rows.append(head[: max(1, max_tokens - len(tail))] + tail)
        return Encoded([np.asarray(r, dtype=np.int64) for r in rows], np.zeros(len(rows), np.int64))

    def encode_chat(
        self, contexts: tuple[Context, ...], answers: tuple[str, ...], max_tokens: int
    ) -> Encoded:
        """Instruction rows in the model's chat template; prompt_lens marks where each answer starts."""
        rendered = [
            render(self.tokenizer, c, a, max_tokens) for c, a in zip(contexts, answers, strict=True)
        ]
        return Encoded(
            [np.asarray(ids, dtype=np.int64) for ids, _ in rendered],
            np.asarray([n for _, n in rendered], dtype=np.int64),
        )

    def _run(self, hidden: torch.Tensor, mask: torch.Tensor, layers: range) -> torch.Tensor:
        position_ids = torch.arange(hidden.shape[1]).unsqueeze(0)  # rows are right-padded
        causal = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=mask,
            past_key_values=None,
            position_ids=position_ids,
        )
        rotary = self._base.rotary_emb(hidden, position_ids=position_ids)
        for i in layers:
            hidden = self._base.layers[i](
                hidden, attention_mask=causal, position_embeddings=rotary, position_ids=position_ids
            )
        return hidden

    def lower(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._run(self._base.embed_tokens(ids), mask, range(self.split))

    def upper(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._run(hidden, mask, range(self.split, self.num_layers))

    def class_logits(self, top: torch.Tensor, batch: Batch) -> torch.Tensor:
        last = top[torch.arange(top.shape[0]), batch.lengths - 1]
        return self.model.lm_head(self._base.norm(last))[:, self.label_tokens]

    def response_losses(
        self, top: torch.Tensor, batch: Batch, *, fast: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token LM loss and hit (argmax == target) on the response tokens of every row, concatenated.

        The LM head (576 x 49k, ~85 % of a step's compute with one adapted layer) runs on those positions
        only. With `fast` (training and a defence's scoring; never the reported evaluation) it multiplies
        in bfloat16 where the CPU does that natively (AMX / AVX512-BF16: 7x faster here), the loss
        still in float32: mixed precision, as LLM fine-tuning usually runs. The rounding moves a row's
        mean loss by ~1e-3 relative (tests/test_learn_chat.py)."""
        rows, cols = response_positions(batch.prompt_lens, batch.lengths, top.shape[1])
        hidden = self._base.norm(top[rows, cols])
        head = self._bf16_head() if fast else None
        if head is None:
            logits = self.model.lm_head(hidden)
        else:
            logits = F.linear(hidden.to(torch.bfloat16), head).float()
        targets = batch.ids[rows, cols + 1]
        losses = F.cross_entropy(logits, targets, reduction="none")
        return losses, (logits.argmax(-1) == targets)

    def _bf16_head(self) -> torch.Tensor | None:
        """The frozen LM head weight in bfloat16 (made once), or None where bf16 matmuls are emulated.

        Made outside inference mode: the first call may come from a defence's scoring under
        `torch.inference_mode()`, and an inference tensor cannot take part in a later training step."""
        if self._head_bf16 is None and BF16_MATMUL:
            with torch.inference_mode(False), torch.no_grad():
                self._head_bf16 = self.model.lm_head.weight.detach().to(torch.bfloat16)
        return self._head_bf16


def response_positions(
    prompt_lens: torch.Tensor, lengths: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every position whose next token is a response token: position p predicts p+1,
    so a row's first predicting position is prompt_len - 1 and its last is length - 2."""
    positions = torch.arange(width).unsqueeze(0)
    use = (positions >= prompt_lens.unsqueeze(1) - 1) & (positions < lengths.unsqueeze(1) - 1)
    rows, cols = use.nonzero(as_tuple=True)
    return rows, cols
