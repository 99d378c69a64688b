"""Print the batch a config produces at a step, decoded to text, to see what the model is trained on.

Text mode shows each row's inputs and targets decoded ([MASK], sentinels and </s> visible, pad dropped) and the
weighted positions; with next-sentence prediction also the label and the two segments A and B. --json prints
{"objective", "split", "step", "examples": [{"inputs": text, "targets": text, "inputs_ids": [...],
"targets_ids": [...], "weights": [...], ...every other batch key...}]} (with NSP also "segment_a", "segment_b").

  python -m data.show --config=experiments/configs/bert.py:tiny --step=3
  python -m data.show --config=experiments/configs/bert.py:tiny --config.objective.nsp=True
  python -m data.show --config=experiments/configs/t5.py:tiny --split=val --examples=1 --json
"""

import json
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from data import pipeline
from data.errors import DataError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path.py:variant).")
_STEP = flags.DEFINE_integer("step", 0, "Training step (or evaluation batch index with --split=val).", lower_bound=0)
_SPLIT = flags.DEFINE_enum("split", "train", ["train", "val"], "Which split's batch to show.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of text.")
_EXAMPLES = flags.DEFINE_integer("examples", 2, "How many rows of the batch to show.", lower_bound=0)


def _input_key(batch: dict) -> str:
    return "encoder_inputs" if "encoder_inputs" in batch else "inputs"


def examples(data, batch: dict, n: int) -> list[dict]:
    """The first n rows as dicts: decoded 'inputs' and 'targets' text plus every array as a list.

    Arrays whose key would collide with the text ('inputs', 'targets') are listed as 'inputs_ids', 'targets_ids'.
    """
    tok, key = data.tokenizer, _input_key(batch)
    rows = []
    for i in range(min(n, len(batch[key]))):
        row = {"inputs": tok.decode(batch[key][i]), "targets": tok.decode(batch["targets"][i])}
        if "nsp_labels" in batch:
            row["segment_a"], row["segment_b"] = _segments(tok, batch, i)
        for k, v in batch.items():
            row[f"{k}_ids" if k in ("inputs", "targets") else k] = v[i].tolist()
        rows.append(row)
    return rows


def _segments(tok, batch: dict, i: int) -> tuple[str, str]:
    """Decoded targets of next-sentence row i: A (type 0 between [CLS] and [SEP]) and B (type 1 before [SEP])."""
    targets, types = batch["targets"][i], batch["token_types"][i]
    a = targets[: np.flatnonzero(types)[0]][1:-1]
    return tok.decode(a), tok.decode(targets[types == 1][:-1])


def _weighted(tok, batch: dict, i: int, limit: int = 40) -> str:
    """'pos: input -> target' for each weighted position where input and target differ or the objective masks."""
    w = batch["weights"][i]
    pos = np.flatnonzero(w)
    if "inputs" not in batch or len(pos) == len(w):
        return f"{len(pos)} of {len(w)} positions weighted"
    items = [
        f"{p}:{tok.id_to_piece(batch['inputs'][i][p])!r}->{tok.id_to_piece(batch['targets'][i][p])!r}"
        for p in pos[:limit]
    ]
    more = f" ... (+{len(pos) - limit})" if len(pos) > limit else ""
    return f"{len(pos)} of {len(w)} positions weighted: " + " ".join(items) + more


def render(data, objective: str, step: int, split: str, batch: dict, n: int) -> str:
    """Human-readable text of the first n rows."""
    tok = data.tokenizer
    shapes = ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in batch.items())
    lines = [f"{objective} | {split} step {step} | {shapes}"]
    for i, row in enumerate(examples(data, batch, n)):
        lines.append(f"--- example {i}")
        if "prefix_len" in batch:
            lines.append(f"prefix_len: {row['prefix_len']}")
        if "nsp_labels" in batch:
            label = "1 IsNext (B follows A)" if row["nsp_labels"] else "0 NotNext (B from elsewhere)"
            lines += [f"nsp_label: {label}", f"A: {row['segment_a']!r}", f"B: {row['segment_b']!r}"]
        lines.append(f"inputs:  {row['inputs']!r}")
        lines.append(f"targets: {row['targets']!r}")
        lines.append(f"weights: {_weighted(tok, batch, i)}")
    return "\n".join(lines)


def main(argv):
    del argv
    config = _CONFIG.value
    try:
        if config is None:
            raise DataError("--config is required, e.g. --config=experiments/configs/gpt.py:tiny")
        data = pipeline.build(config)
        split = data.train if _SPLIT.value == "train" else data.val
        batch = split.batch(_STEP.value)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    objective = config.objective.name
    if _JSON.value:
        out = {
            "objective": objective,
            "split": _SPLIT.value,
            "step": _STEP.value,
            "examples": examples(data, batch, _EXAMPLES.value),
        }
        print(json.dumps(out))
    else:
        print(render(data, objective, _STEP.value, _SPLIT.value, batch, _EXAMPLES.value))


if __name__ == "__main__":
    app.run(main)
