"""Prepares the token store of a config's corpus ahead of training (data/corpus.py, data/store.py).

  python -m data.prepare --config=experiments/configs/gpt.py:tiny --config.data.train_files='web/*.jsonl.zst'
  python -m data.prepare --config=... --num_workers=16                 # one machine, 16 processes
  python -m data.prepare --config=... --num_shards=64 --shard=$SLURM_ARRAY_TASK_ID   # one slice per job
  python -m data.prepare --config=... --finalize       # after the array: the index, or which files are missing

Each slice writes the input files it owns (file i belongs to slice i mod num_shards) into the same store
directory, so data.cache_dir must be storage every job sees; whichever slice sees every file done writes the index,
and `train.main` reads the store of all slices as one. Where the last two slices finish together on storage that
caches directory listings, each can miss the other's files and neither writes it: --finalize (tokenizing nothing)
writes it once every file is done, or names the files still missing. A killed preparation resumes where it stopped
when run again.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from data import corpus, store
from data.errors import DataError

config_flags.DEFINE_config_file("config", None, "Experiment config (its data section), e.g. "
                                "experiments/configs/gpt.py:tiny.", lock_config=True)
flags.DEFINE_integer("num_workers", 0, "Worker processes (0 = data.num_workers, and its 0 = one per core).")
flags.DEFINE_integer("num_shards", 1, "Slices the input files are divided into (one per job of a job array).")
flags.DEFINE_integer("shard", 0, "The slice this job prepares, in [0, num_shards).")
flags.DEFINE_bool("finalize", False, "Prepare nothing: write the index if every input file is done, else name the "
                  "missing ones.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    data = FLAGS.config.data
    try:
        directory = corpus.prepare(data, FLAGS.num_workers or data.num_workers, FLAGS.num_shards, FLAGS.shard,
                                   finalize=FLAGS.finalize)
    except DataError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    index = store.read_json(directory / store.INDEX)
    if index is None:
        missing = store.check_complete(directory, len(corpus.units(data)))
        print(f"slice {FLAGS.shard} of {FLAGS.num_shards} done in {directory}; {len(missing)} input files of other "
              "slices are still to come (once every slice has finished, --finalize writes the index if none did)")
        return
    counts = {s: {k: sum(p[s][k] for p in index["parts"]) for k in ("documents", "tokens", "bytes")}
              for s in store.SPLITS}
    print(f"store {directory}: {len(index['parts'])} parts; " + "; ".join(
        f"{s} {c['documents']:,} documents, {c['tokens']:,} tokens, {c['bytes']:,} bytes" for s, c in counts.items()))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
