"""One frozen base model + adapter + task data per process, shared by every simulated peer.

A peer owns only a flat float32 vector (see adapters.FlatSchema); every method takes the vector to use,
loads it into the shared adapter under a lock, and computes (`score` of an encoder adapted on its top
layer only reads every candidate straight from its vector instead, see batched_score.py). Row indices
given to `train`, `evaluate` and `score` refer to the training pool (`train_labels`); the global test
set is internal.

Why one class of ~500 lines: every method shares one lock, the adapter loaded into the shared peft
model and the feature cache, so training, batched training, evaluation, scoring and export must not
interleave. The layer code lives in backbone.py, batched_score.py and batched_train.py. What should move
out: the branches on the task kind (classification or instruction data) in the loss, the forward pass and
the metrics. They belong to a per-kind objective, and the LLM path's chat format will rework them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
import transformers
from peft import PeftModel

from p2pfed.errors import ConfigError
from p2pfed.learn.adapters import FlatSchema, attach_lora, lora_config, weight_deltas
from p2pfed.learn.allocator import keep_freed_memory
from p2pfed.learn.backbone import Batch, CausalBackbone, EncoderBackbone
from p2pfed.learn.batched_score import BatchedScorer, PreparedRows
from p2pfed.learn.batched_train import BatchedTrainer, TrainJob, draw_steps
from p2pfed.learn.chat import Context, greedy_answer
from p2pfed.learn.config import LearnConfig
from p2pfed.learn.data import TaskData, append_eval, load_task, split_test, test_size_for
from p2pfed.learn.export import HEAD_FILE
from p2pfed.learn.features import Features, build_features
from p2pfed.learn.models import resolve_model
from p2pfed.learn.train import make_optimizer, per_class_f1, per_class_f1_batch, sam_gradients
from p2pfed.types import FloatMatrix, FloatVector

log = logging.getLogger(__name__)

# The classifier head is new by design (drawn from the run seed): transformers' load report, its progress
# bars and a peft deprecation notice would only alarm users.
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

EVAL_BATCH = 128  # rows per no-grad forward in evaluate/score
EVAL_CANDIDATES = 32  # vectors per stacked pass in evaluate_many: 32 x 128 rows keep activations ~25 MB
# candidate-independent tensors score() keeps across calls (~3 MB per 45 trec rows): the first
# peers' validation rows fit, later ones are recomputed each call
PREPARED_BUDGET = 64 * 2**20


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # classification: fraction correct; instruction: next-token accuracy
    loss: float  # mean cross-entropy
    per_class_f1: npt.NDArray[np.float32]  # (num_classes,); empty for instruction data


class TaskModel:
    def __init__(
        self,
        cfg: LearnConfig,
        data: TaskData,
        backbone: EncoderBackbone | CausalBackbone,
        peft_model: PeftModel,
        features: Features,
        base_hash: str,
        test_rows: npt.NDArray[np.int64] | None = None,
    ) -> None:
        self.cfg = cfg
        self.kind = data.kind
        self.label_names = data.label_names
        self.num_classes = max(1, len(data.label_names))
        self.base_hash = base_hash
        self.peft_model = peft_model
        self._data = data
        self._backbone = backbone
        self._features = features
        if test_rows is None:
            self._pool, self._test = split_test(data.labels, test_size_for(data, cfg), cfg.run.seed)
        else:  # an explicit evaluation set (a daemon's --eval file)
            self._test = np.asarray(test_rows, dtype=np.int64)
            self._pool = np.setdiff1d(np.arange(len(data), dtype=np.int64), self._test)
        self.train_labels: npt.NDArray[np.int64] = data.labels[self._pool]
        self._schema = FlatSchema.of(peft_model)
        self.schema = tuple(zip(self._schema.names, self._schema.shapes, strict=True))
        self.dim = self._schema.dim
        self._initial = self._schema.flatten()
        self._lock = threading.RLock()
        # score() runs every candidate in one stacked pass when the model's shape allows it
        self._batched = (
            BatchedScorer.build(backbone, peft_model, self._schema)
            if self.kind == "classification"
            else None
        )
        self._prepared: dict[bytes, list[PreparedRows]] = {}  # by rows, see _prepared_rows
        self._added: dict[bytes, npt.NDArray[np.int64]] = {}  # add_rows() by content -> pool indices
        self._prepared_bytes = 0
        # train_many() steps many peers in one stacked pass when the model's shape allows it
        self._trainer = (
            BatchedTrainer.build(backbone, peft_model, self._schema, features, cfg.optimizer)
            if self.kind == "classification"
            else None
        )

    @classmethod
    def load(
        cls,
        cfg: LearnConfig,
        *,
        progress: Callable[[str], None] | None = None,
        eval_task: str | None = None,
        label_names: tuple[str, ...] = (),
    ) -> TaskModel:
        """Load base + adapter + data. `eval_task`: rows used as the test set instead of a held-out
        split of `cfg.source`; `label_names`: the run's class order for .jsonl files."""
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        keep_freed_memory()  # every step's large temporaries reuse the heap instead of faulting in pages
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        started = time.perf_counter()
        run = cfg.run
        files = resolve_model(run.model, progress=progress)
        data = load_task(cfg.source, label_names=label_names)
        test_rows = None
        if eval_task is not None:
            data, test_rows = append_eval(data, load_task(eval_task, label_names=data.label_names))
        tokenizer = AutoTokenizer.from_pretrained(files.directory)
        backbone: EncoderBackbone | CausalBackbone
        if files.causal:
            model = AutoModelForCausalLM.from_pretrained(files.directory, dtype=torch.float32)
            backbone = CausalBackbone(model, tokenizer, run.adapt_layers, data.label_names)
        else:
            if data.kind == "instruction":
                raise ConfigError(
                    f"instruction data needs a causal LM (e.g. smollm2), not {run.model}"
                )
            model = AutoModelForSequenceClassification.from_pretrained(
                files.directory, num_labels=len(data.label_names), dtype=torch.float32
            )
            backbone = EncoderBackbone(model, tokenizer, run.adapt_layers)
        model.eval()
        model.requires_grad_(False)
        config = lora_config(
            run,
            backbone.layer_regex,
            backbone.lora_targets,
            backbone.num_layers,
            backbone.head_modules,
        )
        peft_model = attach_lora(model, config, run)
        if data.kind == "instruction":
            assert isinstance(backbone, CausalBackbone)
            encoded = backbone.encode_chat(data.contexts, data.responses, run.max_tokens)
        else:
            encoded = backbone.encode(data.texts, run.max_tokens)
        key = None
        if cfg.feature_cache:
            key = {
                "base": files.base_hash,
                "data": data.digest,
                "rows": len(data),
                "split": backbone.split,
                "kind": backbone.kind,
                "max_tokens": run.max_tokens,
                "labels": list(data.label_names),
                "format": "chat" if data.kind == "instruction" else "plain",  # how rows are rendered
            }
        features = build_features(encoded, backbone, key=key, progress=progress)
        task_model = cls(cfg, data, backbone, peft_model, features, files.base_hash, test_rows)
        log.info(
            "loaded %s on %s: %d pool rows, %d test rows, dim %d, %.1f s",
            files.name,
            data.name,
            len(task_model._pool),
            len(task_model._test),
            task_model.dim,
            time.perf_counter() - started,
        )
        return task_model

    # -- vectors ---------------------------------------------------------------------------------

    def initial_vector(self) -> FloatVector:
        return self._initial.copy()

    def weight_deltas(self, vector: FloatVector) -> dict[str, torch.Tensor]:
        return weight_deltas(self.peft_model, self._schema, vector)

    # -- training --------------------------------------------------------------------------------

    def _loss(
        self, batch: Batch, labels: torch.Tensor, offset: torch.Tensor | None = None
    ) -> torch.Tensor:
        assert batch.hidden is not None
        top = self._backbone.upper(batch.hidden, batch.mask)
        if self.kind == "instruction":
            assert isinstance(self._backbone, CausalBackbone)
            return self._backbone.response_losses(top, batch, fast=True)[0].mean()
        logits = self._backbone.class_logits(top, batch)
        return F.cross_entropy(logits if offset is None else logits + offset, labels)

    def prior_offset(self, targets: npt.NDArray[np.int64], strength: float) -> torch.Tensor | None:
        """strength · log π_c, π the (add-one smoothed) label frequencies of the rows we train on; None
        when off or for instruction data. Added to the logits in the training loss only (logit adjustment,
        Menon et al., ICLR 2021; FedLC, Zhang et al., ICML 2022): a peer whose shard is skewed toward a
        few classes no longer learns to push the others' logits down, which is the part of a non-IID
        local update that gossip has to undo every round."""
        if strength <= 0 or self.kind == "instruction":
            return None
        counts = np.bincount(targets, minlength=self.num_classes).astype(np.float64)
        prior = (counts + 1.0) / (counts.sum() + self.num_classes)
        return torch.from_numpy(strength * np.log(prior)).to(torch.float32)

    def train(
        self,
        vector: FloatVector,
        indices: npt.NDArray[np.int64],
        *,
        steps: int,
        lr: float,
        rho: float,
        rng: np.random.Generator,
        labels: npt.NDArray[np.int64] | None = None,
        logit_adjust: float = 0.0,
    ) -> tuple[FloatVector, float]:
        """`steps` SAM steps on pool rows `indices` (labels aligned with them override the true ones).

        With `logit_adjust` τ > 0 the loss is the cross-entropy of logits + τ · log π, π the label
        frequencies of these rows (`prior_offset`); predictions stay the plain logits. The optimizer's
        state starts fresh on every call. Returns the new vector and the mean loss.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            raise ValueError("train() needs at least one row")
        targets = self._targets(indices) if labels is None else np.asarray(labels, dtype=np.int64)
        size = min(self.cfg.batch_size, len(indices))
        offset = self.prior_offset(targets, logit_adjust)
        with self._lock:
            self._schema.load(vector)
            params = self._schema.params
            optimizer = make_optimizer(params, self.cfg.optimizer, lr)
            losses = []
            for _ in range(steps):
                pick = rng.choice(len(indices), size=size, replace=False)
                batch = self._features.batch(self._pool[indices[pick]])
                y = torch.from_numpy(targets[pick])

                # a def, not a lambda: mypy cannot infer a lambda with default arguments
                def loss_fn(b: Batch = batch, y: torch.Tensor = y) -> torch.Tensor:
                    return self._loss(b, y, offset)

                losses.append(sam_gradients(params, loss_fn, rho))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            return self._schema.flatten(), float(np.mean(losses)) if losses else 0.0

    def _targets(self, indices: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The class of each pool row; instruction rows (`add_rows` ones included) carry their target in
        their tokens, so zeros."""
        if self.kind == "instruction":
            return np.zeros(len(indices), dtype=np.int64)
        return self.train_labels[indices]

    def add_rows(self, rows: Sequence[tuple[Context, str]]) -> npt.NDArray[np.int64]:
        """Instruction rows that are not in the task (an attacker's rewritten shard) -> the pool indices
        to train on. Their lower-layer features are computed once per distinct set of rows, so cells of
        an experiment that reuse this model reuse them. `train_labels`, and so every partition of the
        pool, stays as it was; `evaluate`, `score` and `train` take the new indices like any other."""
        if self.kind != "instruction":
            raise ValueError("add_rows() is for instruction tasks")
        key = json.dumps(rows).encode()
        with self._lock:
            known = self._added.get(key)
            if known is None:
                contexts = tuple(c for c, _ in rows)
                answers = tuple(a for _, a in rows)
                assert isinstance(self._backbone, CausalBackbone)
                encoded = self._backbone.encode_chat(contexts, answers, self.cfg.run.max_tokens)
                start = len(self._pool)
                self._pool = np.concatenate([self._pool, self._features.append(encoded)])
                known = self._added[key] = np.arange(start, len(self._pool), dtype=np.int64)
            return known.copy()

    def pool_conversations(self, indices: npt.NDArray[np.int64]) -> list[tuple[Context, str]]:
        """(context, answer) of task pool rows `indices` (not of rows from add_rows)."""
        if self.kind != "instruction":
            raise ValueError("pool_conversations() is for instruction tasks")
        rows = self._pool[np.asarray(indices, dtype=np.int64)].tolist()
        return [(self._data.contexts[i], self._data.responses[i]) for i in rows]

    def train_many(
        self,
        jobs: Sequence[TrainJob],
        *,
        steps: int,
        lr: float,
        rho: float,
        logit_adjust: float = 0.0,
    ) -> list[tuple[FloatVector, float]]:
        """`train` of every job, equal to one call per job up to float rounding, with the same draws
        from each job's rng; stacked across jobs when the model allows it (see batched_train.py)."""
        if self._trainer is None or not jobs:
            return [
                self.train(
                    job.vector,
                    job.indices,
                    steps=steps,
                    lr=lr,
                    rho=rho,
                    rng=job.rng,
                    labels=job.labels,
                    logit_adjust=logit_adjust,
                )
                for job in jobs
            ]
        for job in jobs:
            if len(job.indices) == 0:
                raise ValueError("train_many() needs at least one row per job")
        width = min(self.cfg.batch_size, max(len(job.indices) for job in jobs))
        rows, labels, offsets, weights = [], [], [], []
        for job in jobs:
            indices = np.asarray(job.indices, dtype=np.int64)
            targets = self._targets(indices) if job.labels is None else job.labels
            size = min(self.cfg.batch_size, len(indices))
            picks = draw_steps(job.rng, len(indices), size, steps)
            picks = np.pad(picks, ((0, 0), (0, width - size)))  # weight 0 on the padding rows
            rows.append(self._pool[indices[picks]])
            labels.append(np.asarray(targets, dtype=np.int64)[picks])
            offset = self.prior_offset(targets, logit_adjust)
            offsets.append(torch.zeros(self.num_classes) if offset is None else offset)
            weights.append(torch.arange(width) < size)
        vectors = np.stack([job.vector for job in jobs]).astype(np.float32)
        with self._lock:
            trained, losses = self._trainer.train(
                torch.from_numpy(vectors),
                torch.from_numpy(np.stack(rows)),
                torch.from_numpy(np.stack(labels)),
                torch.stack(offsets),
                torch.stack(weights).float(),
                lr=lr,
                rho=rho,
            )
        return [(v.copy(), loss) for v, loss in zip(trained.numpy(), losses.tolist(), strict=True)]

    # -- evaluation ------------------------------------------------------------------------------

    def _forward_all(self, batches: list[Batch], *, fast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Classification: (logits of every row, in batch order); instruction: (token losses, hits), the
        LM head in bfloat16 if `fast` (see CausalBackbone.response_losses)."""
        outputs, extras = [], []
        for batch in batches:
            assert batch.hidden is not None
            top = self._backbone.upper(batch.hidden, batch.mask)
            if self.kind == "instruction":
                assert isinstance(self._backbone, CausalBackbone)
                losses, hits = self._backbone.response_losses(top, batch, fast=fast)
                outputs.append(losses)
                extras.append(hits)
            else:
                outputs.append(self._backbone.class_logits(top, batch))
        return torch.cat(outputs), torch.cat(extras) if extras else torch.zeros(0)

    def _batches(self, rows: npt.NDArray[np.int64]) -> tuple[list[Batch], npt.NDArray[np.int64]]:
        chunks = self._features.batches(rows, EVAL_BATCH)
        return [self._features.batch(c) for c in chunks], np.concatenate(chunks)

    def evaluate(
        self, vector: FloatVector, indices: npt.NDArray[np.int64] | None = None
    ) -> EvalResult:
        """Accuracy, loss and per-class F1 on pool rows `indices`, or on the global test set if None."""
        rows = self._test if indices is None else self._pool[np.asarray(indices, dtype=np.int64)]
        return self._evaluate_rows(vector, rows)

    def _evaluate_rows(self, vector: FloatVector, rows: npt.NDArray[np.int64]) -> EvalResult:
        """evaluate() on data rows `rows` (pool or test), one forward of the shared model."""
        with self._lock:
            self._schema.load(vector)
            with torch.inference_mode():
                batches, order = self._batches(rows)
                out, hits = self._forward_all(batches)
        if self.kind == "instruction":
            return EvalResult(
                float(hits.float().mean()), float(out.mean()), np.zeros(0, np.float32)
            )
        true = self._data.labels[order]
        loss = float(F.cross_entropy(out, torch.from_numpy(true)))
        predicted = out.argmax(-1).numpy()
        return EvalResult(
            accuracy=float(np.mean(predicted == true)),
            loss=loss,
            per_class_f1=per_class_f1(predicted, true, self.num_classes),
        )

    def evaluate_many(
        self, vectors: FloatMatrix, sample: npt.NDArray[np.int64] | None = None
    ) -> list[EvalResult]:
        """`evaluate` of every (m, d) vector on the global test set, or on the test positions `sample`;
        one stacked pass per EVAL_CANDIDATES vectors when the model allows it (batched_score.py), else
        one evaluate() each. Equal to evaluate() up to float rounding."""
        vectors = np.atleast_2d(vectors)
        rows = self._test if sample is None else self._test[np.asarray(sample, dtype=np.int64)]
        if self._batched is None or len(rows) == 0:
            return [self._evaluate_rows(v, rows) for v in vectors]
        true = self._data.labels[rows]
        results = []
        for start in range(0, len(vectors), EVAL_CANDIDATES):
            for out in self._rows_logits(vectors[start : start + EVAL_CANDIDATES], rows):
                logits = torch.from_numpy(out)
                loss = float(F.cross_entropy(logits, torch.from_numpy(true)))
                predicted = out.argmax(-1)
                f1 = per_class_f1(predicted, true, self.num_classes)
                results.append(EvalResult(float(np.mean(predicted == true)), loss, f1))
        return results

    def logits(
        self, vector: FloatVector, indices: npt.NDArray[np.int64] | None = None
    ) -> npt.NDArray[np.float32]:
        """(n, num_classes) class scores of pool rows `indices` (test set if None), in the order given."""
        if self.kind != "classification":
            raise ValueError("logits() is for classification tasks")
        rows = self._test if indices is None else self._pool[np.asarray(indices, dtype=np.int64)]
        with self._lock:
            self._schema.load(vector)
            with torch.inference_mode():
                batches, order = self._batches(rows)
                out, _ = self._forward_all(batches)
        position = {row: i for i, row in enumerate(order.tolist())}
        return out.numpy()[[position[r] for r in rows.tolist()]].astype(np.float32)

    @property
    def batched_train(self) -> bool:
        """True when train_many() steps all its jobs in one stacked pass (see batched_train.py);
        False: one train() call each."""
        return self._trainer is not None

    @property
    def batched_score(self) -> bool:
        """True when score() and candidate_logits() run all candidates in one stacked pass (an
        encoder adapted on its top layer only, see batched_score.py); False: one forward each."""
        return self._batched is not None

    def candidate_logits(
        self, vectors: FloatMatrix, indices: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """(m, d) candidates -> (m, n, num_classes) class scores on pool rows `indices`, in the order
        given; equal to logits() of each candidate up to float rounding."""
        if self.kind != "classification":
            raise ValueError("candidate_logits() is for classification tasks")
        return self._rows_logits(np.atleast_2d(vectors), self._pool[np.asarray(indices, dtype=np.int64)])

    def _rows_logits(
        self, vectors: FloatMatrix, rows: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """candidate_logits on data rows `rows` (pool or test), in the order given."""
        if len(rows) == 0:
            return np.zeros((len(vectors), 0, self.num_classes), dtype=np.float32)
        with self._lock, torch.inference_mode():
            if self._batched is not None:
                flat = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
                out = [self._batched.logits(flat, part) for part in self._prepared_rows(rows)]
                return (torch.cat(out, dim=1) if len(out) > 1 else out[0]).numpy()
            batches, order = self._batches(rows)  # gathered once, reused by every candidate
            looped = torch.stack([self._forward_all(batches)[0] for _ in self._loaded(vectors)])
        position = {row: i for i, row in enumerate(order.tolist())}
        return looped.numpy()[:, [position[r] for r in rows.tolist()]].astype(np.float32)

    def score(self, vectors: FloatMatrix, indices: npt.NDArray[np.int64]) -> FloatMatrix:
        """(m, d) candidates -> (m, c) scores on pool rows `indices`, higher is better.

        Classification: per-class F1 (c = num_classes); instruction: minus the mean loss (c = 1).
        """
        vectors = np.atleast_2d(vectors)
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            return np.zeros((len(vectors), self.num_classes), dtype=np.float32)
        if self.kind == "classification":
            predicted = self.candidate_logits(vectors, indices).argmax(-1)
            return per_class_f1_batch(predicted, self.train_labels[indices], self.num_classes)
        with self._lock, torch.inference_mode():
            batches, _ = self._batches(self._pool[indices])
            losses = [self._forward_all(batches, fast=True)[0].mean() for _ in self._loaded(vectors)]
        return -torch.stack(losses).reshape(-1, 1).numpy().astype(np.float32)

    def _prepared_rows(self, rows: npt.NDArray[np.int64]) -> list[PreparedRows]:
        """The candidate-independent part of the top layer on `rows` (in chunks), kept for the next
        call while PREPARED_BUDGET lasts: a peer scores on the same validation rows every round."""
        assert self._batched is not None
        key = rows.tobytes()
        prepared = self._prepared.get(key)
        if prepared is None:
            chunks = [rows[i : i + EVAL_BATCH] for i in range(0, len(rows), EVAL_BATCH)]
            prepared = [self._batched.prepare(*self._packed(chunk)) for chunk in chunks]
            size = sum(part.nbytes for part in prepared)
            if self._prepared_bytes + size <= PREPARED_BUDGET:
                self._prepared[key] = prepared
                self._prepared_bytes += size
        return prepared

    def _packed(self, rows: npt.NDArray[np.int64]) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower-layer output of every token of `rows` (row after row, no padding) and row lengths."""
        features = self._features
        lengths = features.lengths[rows]
        if features.hidden is None:  # no cache: run the lower layers on a padded batch
            batch = features.batch(rows)
            assert batch.hidden is not None
            return batch.hidden[batch.mask.bool()], batch.lengths
        skip = features.offsets[rows] - (np.cumsum(lengths) - lengths)  # packed -> cache position
        index = np.arange(int(lengths.sum())) + np.repeat(skip, lengths)
        return features.hidden[torch.from_numpy(index)], torch.from_numpy(lengths)

    def _loaded(self, vectors: FloatMatrix) -> Iterator[None]:
        """Load each vector into the shared model in turn (caller holds the lock)."""
        for vector in vectors:
            with torch.inference_mode(False), torch.no_grad():
                self._schema.load(vector)
            yield

    # -- generation (instruction data) ---------------------------------------------------------------

    def test_conversations(self, count: int) -> list[tuple[Context, str]]:
        """(context, reference answer) of the first `count` global test rows: fixed held-out prompts."""
        if self.kind != "instruction":
            raise ValueError("test_conversations() is for instruction tasks")
        return [(self._data.contexts[i], self._data.responses[i]) for i in self._test[:count].tolist()]

    def generate(
        self, vector: FloatVector, contexts: Sequence[Context], *, max_new_tokens: int = 48
    ) -> list[str]:
        """Greedy answers of the full model with adapter `vector` (no feature cache: any prompt works)."""
        with self._lock:
            self._schema.load(vector)
            tokenizer = self._backbone.tokenizer
            return [
                greedy_answer(self.peft_model, tokenizer, c, max_new_tokens=max_new_tokens)
                for c in contexts
            ]

    # -- export ----------------------------------------------------------------------------------

    def save_adapter(self, vector: FloatVector, directory: str | Path) -> None:
        """A standard peft adapter dir: adapter_config.json + adapter_model.safetensors.

        The classifier head (encoders) travels inside adapter_model.safetensors as a peft
        `modules_to_save` entry, so `PeftModel.from_pretrained(base, directory)` restores it, given a
        base loaded with `num_labels=len(label_names)`. `p2pfed.json` records labels and the base hash.
        """
        directory = Path(directory)
        with self._lock:
            self._schema.load(vector)
            self.peft_model.save_pretrained(str(directory))  # peft annotates `str`
        facts = {
            "label_names": list(self.label_names),
            "base_hash": self.base_hash,
            "learn_config": asdict(self.cfg),
        }
        (directory / HEAD_FILE).write_text(json.dumps(facts, indent=2) + "\n")

    # -- helpers for tests and benchmarks ---------------------------------------------------------

    @property
    def pool_size(self) -> int:
        """Rows of the task's own training pool (rows from add_rows not counted)."""
        return len(self.train_labels)

    @property
    def pool_rows(self) -> npt.NDArray[np.int64]:
        """The task-data row of every pool index (what a benchmark outside p2pfed trains on)."""
        return self._pool.copy()

    @property
    def test_labels(self) -> npt.NDArray[np.int64]:
        return self._data.labels[self._test]

    def pool_texts(self, indices: npt.NDArray[np.int64]) -> list[str]:
        return [self._data.texts[i] for i in self._pool[np.asarray(indices, dtype=np.int64)]]
