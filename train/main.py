"""Trains one model: python -m train.main --config=experiments/configs/gpt.py:tiny --workdir=runs/gpt

Any config field can be overridden with --config.a.b=value. Multi-host runs add --coordinator_address,
--num_processes and --process_id (see README, "Scaling out").
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from train import errors

config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. experiments/configs/gpt.py:tiny.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for config.json, metrics, TensorBoard events and checkpoints.")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 for multi-host runs (jax.distributed).")
flags.DEFINE_integer("num_processes", 0, "Number of processes in a multi-host run.")
flags.DEFINE_integer("process_id", -1, "This process's index in a multi-host run.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    with errors.one_line():
        from train import loop, parallel  # after flag parsing: a bad flag is reported before JAX starts

        parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        summary = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    logging.info("done: %s", {k: v for k, v in summary.items() if k not in ("history",)})


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    sys.exit(errors.run_app(main))
