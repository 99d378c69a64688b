"""Each training objective as one unit: what its batches hold, its loss and metrics as sums with their counts, and
how they are summarized, shown and described. The step, the loop, the metrics writer and the report only call it.

  TokenObjective   causal_lm, prefix_lm, mlm, span_corruption: token cross-entropy on `targets` / `weights`
  NextSentence     mlm + objective.nsp: the MLM mean plus BERT's next-sentence mean
  Classification   classify (fine-tuning): one label per example, and a confusion matrix at evaluation

The batch layout (key -> per-example shape and dtype) is the data side's (data/objectives.py, data/classify.py).
Adding an objective is one class here (or just its name and description, if it is token cross-entropy), its batch
builder in data/, and its config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from data import objectives as data_objectives
from train import losses

# Batch keys that are token sequences fed to a model (what tokens per example and FLOPs count).
TOKEN_INPUTS = ("inputs", "encoder_inputs", "decoder_inputs")


@dataclasses.dataclass(frozen=True)
class TokenObjective:
    """Token cross-entropy: every objective whose loss is the weighted mean over predicted tokens."""

    name: str
    layout: dict[str, tuple[tuple[int, ...], Any]]  # batch key -> (per-example shape, dtype)
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    # mlm: no row has more predicted positions (weights > 0) than this; the model's head then runs on those alone
    # (BERT's predict_at), the others' zero weights left out of the sums. 0 = every position (the other objectives).
    predicted: int = 0

    sum_keys: ClassVar[tuple[str, ...]] = losses.TOKEN_SUMS  # what a step returns; 'weight' is the token count
    shown: ClassVar[tuple[str, ...]] = ("loss", "accuracy", "bits_per_byte")  # on the progress line
    # name -> (short name, what its loss is), for reports.
    DESCRIPTIONS: ClassVar[dict[str, tuple[str, str]]] = {
        "causal_lm": ("causal LM", "next-token cross-entropy at every position, left context only"),
        "prefix_lm": ("prefix LM", "next-token cross-entropy after a random bidirectional prefix"),
        "mlm": ("masked LM", "cross-entropy of the selected (masked) tokens, from both sides"),
        "span_corruption": ("span corruption", "cross-entropy of the decoder targets: dropped spans and sentinels"),
        "classify": ("classification", "cross-entropy of one label per example"),
    }
    # Where nats per byte of predicted text are a compression rate of the text (every byte is predicted once).
    COMPRESSES: ClassVar[tuple[str, ...]] = ("causal_lm",)

    @property
    def lengths(self) -> tuple[int, int]:
        """(seq_len, target_len) of the model: (L, 0) for one sequence, (S, T) for an encoder-decoder."""
        if "encoder_inputs" in self.layout and "decoder_inputs" in self.layout:
            return self.layout["encoder_inputs"][0][0], self.layout["decoder_inputs"][0][0]
        key = "encoder_inputs" if "encoder_inputs" in self.layout else "inputs"
        return self.layout[key][0][0], 0

    @property
    def tokens_per_example(self) -> int:
        """Token positions one example feeds the model (encoder + decoder positions for an encoder-decoder)."""
        return sum(self.layout[k][0][0] for k in TOKEN_INPUTS if k in self.layout)

    def constants(self, batch: dict, axis_name: str | None = None) -> dict:
        """Quantities of the whole global batch the loss needs (taken before the microbatch and device split)."""
        return {}

    def forward(self, model, params, batch: dict, rng, train: bool, method: str | None = None, **extra):
        """The model applied to the batch entries it takes (dropout from `rng` when training)."""
        inputs = {k: batch[k] for k in model.input_names if k in batch}
        return model.apply({"params": params}, **inputs, **extra, train=train,
                           rngs={"dropout": rng} if train else {}, method=method)

    def predicted_positions(self, batch: dict) -> tuple[dict, dict]:
        """({'predict_at': (B, K) positions} or {}, the batch with targets, weights and target_bytes at those).

        The K positions of largest weight per row (lax.top_k: every predicted one, as no row has more than K, then
        unpredicted ones of weight 0); the sums over them are the sums over all L positions, reassociated."""
        if not self.predicted:
            return {}, batch
        _, at_BxK = jax.lax.top_k(batch["weights"], min(self.predicted, batch["weights"].shape[1]))
        picked = {k: jnp.take_along_axis(batch[k], at_BxK, axis=1)
                  for k in ("targets", "weights", "target_bytes") if k in batch}
        return {"predict_at": at_BxK}, {**batch, **picked}

    def token_sums(self, logits, batch: dict, train: bool) -> dict[str, jax.Array]:
        return losses.cross_entropy(logits, batch["targets"], batch["weights"], batch.get("target_bytes"),
                                    label_smoothing=self.label_smoothing if train else 0.0,
                                    z_loss=self.z_loss if train else 0.0)

    def loss_sums(self, model, params, batch: dict, rng, train: bool, constants: dict) -> dict[str, jax.Array]:
        """Summed metrics of `batch` (sum_keys); the step minimises sums['loss'] / sums['weight']."""
        extra, batch = self.predicted_positions(batch)
        return self.token_sums(self.forward(model, params, batch, rng, train, **extra), batch, train)

    def summarize(self, sums: dict, prefix: str) -> dict[str, float]:
        """Host-side averages of summed metrics (divided once, here)."""
        return losses.token_metrics(sums, prefix)

    @classmethod
    def describe(cls, name: str) -> tuple[str, str]:
        """(short name, what the loss is) of an objective name, for reports."""
        return cls.DESCRIPTIONS.get(name, (name, ""))


@dataclasses.dataclass(frozen=True)
class NextSentence(TokenObjective):
    """MLM + next-sentence prediction: loss = MLM mean (per predicted token) + NSP mean (per example).

    The step divides every sum by the global token weight W, so the NSP loss sum of the batch's B examples enters
    `loss` times W / B, both counted over the whole batch before the microbatch and device split (`constants`):
    k microbatches, n devices and one big batch then give the same update.
    """

    sum_keys: ClassVar[tuple[str, ...]] = losses.TOKEN_SUMS + losses.NSP_SUMS
    shown: ClassVar[tuple[str, ...]] = ("loss", "accuracy", "nsp_accuracy", "bits_per_byte")

    def constants(self, batch: dict, axis_name: str | None = None) -> dict:
        weight = jnp.sum(batch["weights"].astype(jnp.float32))
        examples = jnp.float32(batch["nsp_labels"].shape[0])
        if axis_name is not None:
            weight, examples = jax.lax.psum((weight, examples), axis_name)
        return {"nsp_scale": weight / examples}

    def loss_sums(self, model, params, batch: dict, rng, train: bool, constants: dict) -> dict[str, jax.Array]:
        extra, batch = self.predicted_positions(batch)
        logits, nsp_logits_Bx2 = self.forward(model, params, batch, rng, train, method="mlm_and_nsp", **extra)
        sums = self.token_sums(logits, batch, train)
        sums.update(losses.nsp_sums(nsp_logits_Bx2, batch["nsp_labels"]))
        sums["loss"] = sums["loss"] + constants["nsp_scale"] * sums["nsp_loss"]
        return sums

    def summarize(self, sums: dict, prefix: str) -> dict[str, float]:
        """Token metrics of the MLM part (nll, accuracy, perplexity, bits per byte are the MLM's alone; `loss` is
        what the step minimises, each batch's NSP mean counted in proportion to its token weight) and the NSP
        loss and accuracy per example."""
        return {**losses.token_metrics(sums, prefix), **losses.nsp_metrics(sums, prefix)}


@dataclasses.dataclass(frozen=True)
class Classification(TokenObjective):
    """One label per example (logits (B, 1, C), targets and weights (B, 1)); evaluation adds the (C, C) confusion
    counts, from which the host computes accuracy and F1."""

    shown: ClassVar[tuple[str, ...]] = ("loss", "accuracy")

    def loss_sums(self, model, params, batch: dict, rng, train: bool, constants: dict) -> dict[str, jax.Array]:
        logits = self.forward(model, params, batch, rng, train)
        sums = self.token_sums(logits, batch, train)
        if not train:
            sums["confusion"] = losses.confusion(logits, batch["targets"], batch["weights"])
        return sums

    def summarize(self, sums: dict, prefix: str) -> dict[str, float]:
        out = losses.token_metrics(sums, prefix)
        if "confusion" in sums:  # evaluation only
            out.update(losses.classification_metrics(sums["confusion"], prefix))
        return out


def build(objective_config, layout: dict) -> TokenObjective:
    """The unit for config.objective (name, nsp, label_smoothing, z_loss, and for mlm mask_rate and whole_word) on
    batches of `layout`."""
    oc = objective_config
    cls = {"classify": Classification}.get(oc.name, TokenObjective)
    if oc.name == "mlm" and oc.nsp:
        cls = NextSentence
    predicted = 0
    if oc.name == "mlm" and not oc.whole_word:  # whole words can overshoot the count (data/objectives.py)
        predicted = int(data_objectives.selected_count(oc.mask_rate, layout["targets"][0][0]))
    return cls(oc.name, dict(layout), oc.label_smoothing, oc.z_loss, predicted)
