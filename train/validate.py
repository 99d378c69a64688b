"""`validate(config)`: refuses a config.train / config.objective value that cannot mean anything, before anything
is built, with one UserError naming the field, its value and the values it may take.

Only fields no other module checks are checked here. Checked elsewhere (so not here): train.batch_size, seed and
data.prefetch (data/pipeline.py), data.val_fraction (data/corpus.py), data.seq_len, data.target_len and the
objective's rates and span settings (data/objectives.py; data/classify.py for fine-tuning), train.microbatches
dividing the batch (train/parallel.py), train.optimizer and train.schedule with the knobs of the chosen ones
(train.muon_*, train.lion_*, train.decay_fraction, train.decay_shape; train/optim.py), model.* (model/config.py),
task.* (data/classify.py, data/probes.py).
"""

import math

import ml_collections

from train import errors


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _at_least_one(v) -> bool:
    return v >= 1


def _unit_closed(v) -> bool:
    return 0 <= v <= 1


def _unit_half_open(v) -> bool:
    return 0 <= v < 1


# (field, test, what the value must be). Every test is written so that NaN fails it.
RULES = (
    ("train.steps", _positive, "must be positive"),
    ("train.microbatches", _at_least_one, "must be at least 1 (1 = no gradient accumulation)"),
    ("train.learning_rate", _non_negative, "must be >= 0"),
    ("train.warmup_steps", _non_negative, "must be >= 0 (0 = no warmup)"),
    ("train.min_lr_ratio", _unit_closed, "must be in [0, 1] (a fraction of train.learning_rate)"),
    ("train.b1", _unit_half_open, "must be in [0, 1)"),
    ("train.b2", _unit_half_open, "must be in [0, 1)"),
    ("train.eps", _positive, "must be positive"),
    ("train.momentum", _unit_half_open, "must be in [0, 1) (0 = plain SGD)"),
    ("train.weight_decay", _non_negative, "must be >= 0"),
    ("train.grad_clip", _non_negative, "must be >= 0 (0 disables clipping)"),
    ("train.log_every", _positive, "must be positive"),
    ("train.eval_every", _positive, "must be positive"),
    ("train.eval_steps", _at_least_one, "must be at least 1"),
    ("train.checkpoint_every", _positive, "must be positive"),
    ("train.keep_checkpoints", _at_least_one, "must be at least 1"),
    ("objective.label_smoothing", _unit_half_open, "must be in [0, 1) (0 = none)"),
    ("objective.z_loss", _non_negative, "must be >= 0 (0 = none)"),
)

NONFINITE = ("stop", "skip")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises UserError for the first field of RULES (or train.nonfinite) whose value cannot mean anything."""
    # Fine-tuning takes train.eval_steps=0 as "the whole evaluation set" (data/classify.py checks and resolves it).
    skip = {"train.eval_steps"} if config.objective.name == "classify" else set()
    for field, ok, must in RULES:
        if field in skip:
            continue
        section, name = field.split(".")
        value = config[section][name]
        if isinstance(value, float) and not math.isfinite(value):
            raise errors.UserError(f"{field}={value} must be a finite number ({must.removeprefix('must be ')})")
        if not ok(value):
            raise errors.UserError(f"{field}={value} {must}")
    if config.train.nonfinite not in NONFINITE:
        raise errors.UserError(f"train.nonfinite={config.train.nonfinite!r} is unknown: choose 'stop' (end the run) "
                               "or 'skip' (skip the update)")
