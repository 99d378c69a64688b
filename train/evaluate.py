"""Evaluates a workdir's newest checkpoint on its validation data, optionally with int8 weights.

  python -m train.evaluate --workdir=runs/gpt                              # float, train.eval_steps batches
  python -m train.evaluate --workdir=runs/gpt --quantize=int8 --eval_steps=20

--quantize=int8 reports the float and the int8 results side by side and the weight memory of each. The int8 model
is simulated: every matrix is quantized (model/quantize.py) and dequantized before the float forward pass, so the
numbers measure the weight error and the storage saved, not int8 compute speed.

--shuffle_encoder (encoder-decoder workdirs) evaluates the same batches a second time with every row's encoder
input replaced by the next row's: the loss increase is how much the decoder's predictions use the encoder. A
decoder that ignores its encoder (a plain LM over the targets) shows no increase.

  python -m train.evaluate --workdir=runs/compare/t5 --shuffle_encoder
"""

from __future__ import annotations

import sys
import types

import jax
import numpy as np
from absl import app, flags, logging

from model import quantize as quant
from train import errors, loop, sample  # noqa: F401 (sample defines --workdir and --quantize, shared)
from train.workdir import load_workdir

flags.DEFINE_integer("eval_steps", 0, "Validation batches (0 = the workdir's train.eval_steps).")
flags.DEFINE_bool("shuffle_encoder", False, "Encoder-decoder models: also evaluate with each row's encoder input "
                  "taken from the next row (how much the decoder uses the encoder).")
FLAGS = flags.FLAGS


def shuffled_encoder(batch: dict) -> dict:
    """The batch with row i's encoder input replaced by row i + 1's (cyclically); targets stay where they were."""
    return {**batch, "encoder_inputs": np.roll(batch["encoder_inputs"], -1, axis=0)}


def evaluate_workdir(workdir: str, quantize: str = "none", eval_steps: int = 0,
                     shuffle_encoder: bool = False) -> dict[str, float]:
    """{'float/loss', 'float/bits_per_byte', ... [, 'int8/...', 'weight_bytes/float', 'weight_bytes/int8']
    [, 'shuffled/...']}."""
    if quantize not in ("none", "int8"):
        raise errors.UserError(f"--quantize={quantize!r} is unknown: choose 'none' or 'int8'")
    config, _, _, params, _ = load_workdir(workdir)
    if "train" not in config or "data" not in config:
        raise errors.UserError(f"--workdir={workdir} records no training data config (an imported model?): "
                               "train.evaluate needs a workdir written by train.main")
    if eval_steps < 0:
        raise errors.UserError(f"--eval_steps={eval_steps} must be >= 1 (0 = the workdir's evaluation batches)")
    if shuffle_encoder and config.model.arch != "t5":
        raise errors.UserError(f"--shuffle_encoder needs an encoder-decoder workdir (model.arch='t5'); "
                               f"{workdir} is {config.model.arch!r}")
    data, _, _, runner = loop.build(config)
    steps = eval_steps or data.eval_steps
    if shuffle_encoder and data.val.batch(0)["encoder_inputs"].shape[0] < 2:
        raise errors.UserError("--shuffle_encoder needs at least 2 rows per process; raise train.batch_size")

    def run(p, d=data) -> dict[str, float]:
        state = types.SimpleNamespace(params=runner.shard_params(p))  # runner.evaluate reads only state.params.
        return loop.evaluate(runner, state, d, steps)

    out = {k.replace("eval/", "float/"): v for k, v in run(params).items()}
    if quantize == "int8":
        q_params = jax.tree.map(jax.numpy.asarray, quant.quantize_dequantize(params))
        out.update({k.replace("eval/", "int8/"): v for k, v in run(q_params).items()})
        out["weight_bytes/float"], out["weight_bytes/int8"] = map(float, quant.weight_bytes(params))
    if shuffle_encoder:  # loop.evaluate reads only data.val.batch
        shuffled = types.SimpleNamespace(val=types.SimpleNamespace(batch=lambda i: shuffled_encoder(data.val.batch(i))))
        out.update({k.replace("eval/", "shuffled/"): v for k, v in run(params, shuffled).items()})
    return out


def report(results: dict[str, float]) -> list[str]:
    """Lines comparing the float and (if present) int8 results."""
    kinds = [k for k in ("float", "int8", "shuffled") if f"{k}/loss" in results]
    lines = []
    for metric in ("loss", "accuracy", "perplexity", "bits_per_byte"):
        if f"float/{metric}" in results:
            lines.append(f"{metric:>14}: " + "  ".join(f"{k} {results[f'{k}/{metric}']:.4f}" for k in kinds))
    if "int8/loss" in results:
        f, q = results["weight_bytes/float"], results["weight_bytes/int8"]
        rel = 100 * (results["int8/loss"] - results["float/loss"]) / results["float/loss"]
        lines.append(f"  int8 loss change: {rel:+.2f}%")
        lines.append(f"  weight memory: float {f / 2**20:.2f} MiB, int8 + scales {q / 2**20:.2f} MiB "
                     f"({100 * (1 - q / f):.1f}% saved; compute here is float: weights are dequantized)")
    if "shuffled/loss" in results:
        lines.append(f"  encoder use: loss {results['shuffled/loss'] - results['float/loss']:+.4f} nats with each "
                     "row's encoder input taken from another row (0: the decoder ignores its encoder)")
    return lines


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    with errors.one_line():
        for line in report(evaluate_workdir(FLAGS.workdir, FLAGS.quantize, FLAGS.eval_steps, FLAGS.shuffle_encoder)):
            print(line)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    sys.exit(errors.run_app(main))
