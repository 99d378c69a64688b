"""Fine-tunes a pretrained workdir (or a randomly initialised baseline) on a classification task.

  python -m train.main --config=experiments/configs/finetune.py:task=next_sentence \
      --config.init_from=runs/bert --workdir=runs/bert-nsp
  python -m train.main --config=experiments/configs/finetune.py:task=word_order,arch=gpt --workdir=runs/gpt0-wo
  python -m train.main --config=experiments/configs/finetune.py:task=jsonl --config.init_from=runs/bert \
      --config.data.train_files=train.jsonl --config.data.val_files=val.jsonl --workdir=runs/bert-mine

Argument: `task=` one of data/classify.py's TASKS ('next_sentence', 'word_order': probes built from the corpus's
validation text, see data/probes.py; 'jsonl': your files), `arch=` 'bert', 'gpt' or 't5' (default 'bert').
With init_from the model (model.*) and the tokenizer settings (and, for the probes, the corpus settings) of
config.data are read from the pretrained workdir's config.json, overriding those here, and `arch` is ignored;
without it the model is a randomly initialised `tiny` model of `arch`: the baseline. task.model_from=<workdir>
takes the model and data settings from a workdir like init_from but keeps the random initialisation (the baseline
shaped exactly like a pretrained contender). task.num_classes and train.eval_steps left at 0 are derived from the
data; these resolved values (and the inherited ones) are written into the config, so config.json records them.
The recipe below (600 steps of 32 x 32 tokens, AdamW 3e-4) is the one experiments/probes.py runs for every
contender. For the probe tasks it also pools with 'max' over the tokens, trains on 4 (positive, negative) pairs per
probe-train source document (task.train_pairs) and, for T5, reads the decoder's states with the text fed to both
encoder and decoder (BART's way); other tasks use the architecture's default pooling of model/classifier.py and
T5's encoder. Probe batches keep each source document's pairs together (data/classify.py). Each of these choices
was measured against the alternatives (one pair per source memorised the training pairs; examples shuffled one by
one stayed at chance; T5's encoder output carried less than its decoder): docs/results.md, "The probe recipe".
"""

import ml_collections

from data.probes import TASKS as PROBE_TASKS
from experiments.configs import base

RECIPE = dict(seq_len=32, batch_size=32, steps=600, learning_rate=3e-4, warmup_steps=60)


def parse_arg(arg: str) -> dict[str, str]:
    """'task=next_sentence,arch=gpt' -> {'task': 'next_sentence', 'arch': 'gpt'} (defaults filled in)."""
    out = {"task": "next_sentence", "arch": "bert"}
    for item in filter(None, (s.strip() for s in arg.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in out:
            raise ValueError(f"finetune.py:{arg}: expected comma-separated task=... and arch=..., got {item!r}")
        out[key] = value
    return out


def get_config(arg: str = "task=next_sentence") -> ml_collections.ConfigDict:
    """The fine-tuning config for `arg` (see the module docstring)."""
    a = parse_arg(arg)
    if a["arch"] not in base.OBJECTIVES:
        raise ValueError(f"finetune.py: arch={a['arch']!r} is unknown; choose one of {list(base.OBJECTIVES)}")
    c = base.base_config(a["arch"], "tiny")
    r = RECIPE
    c.objective.name = "classify"  # Cross-entropy on one label per example (data/classify.py, model/classifier.py).

    c.task = ml_collections.ConfigDict()
    c.task.name = a["task"]  # 'next_sentence', 'word_order' (probes of the corpus's val text) or 'jsonl'.
    c.task.model_from = ""  # Workdir whose model config and tokenizer to use WITHOUT its parameters (a baseline).
    c.task.num_classes = 0  # Classes; 0 = the number of distinct training labels (must match if set).
    c.task.max_train_examples = 0  # Use only the first N training examples (0 = all).
    c.task.max_eval_examples = 0  # Use only the first N evaluation examples (0 = all).
    c.task.seed = 0  # Seeds the probes' negatives and swaps (not config.seed: same probe data for every run).
    c.task.eval_fraction = 0.3  # Probes: fraction of the validation documents that become probe-eval sources.
    c.task.max_words = 16  # Probes: words of text per example (next_sentence: half for each side).
    c.task.passages = 32  # Probes: sources per validation document (sentence runs of >= max_words words), spaced.
    c.task.swaps = 1  # word_order: disjoint adjacent word pairs swapped in a negative example.
    # Probes: (positive, negative) pairs per probe-train source document, each pair with another negative (another
    # swap; another document's continuation). The probe-eval part always has one pair per source.
    c.task.train_pairs = 4
    # Which hidden state stands for the example: 'first', 'last', 'mean', 'max' or '' (the architecture's default).
    c.task.pooling = "max" if a["task"] in PROBE_TASKS else ""
    # T5 only: 'encoder' pools the encoder output; 'decoder' feeds the text to the encoder and (after the start
    # token) to the decoder too and pools the decoder's states, as BART classifies.
    c.task.t5_states = "decoder" if a["task"] in PROBE_TASKS else "encoder"
    c.task.dropout = -1.0  # model.dropout while fine-tuning; -1 keeps the (pretrained) model's.

    c.data.seq_len = r["seq_len"]  # Tokens per example, specials included; longer examples are truncated.
    c.data.val_files = ""  # jsonl: the evaluation file(s) (required); probes: as in pretraining.
    c.model.max_len = max(c.model.max_len, r["seq_len"])

    c.train.steps = r["steps"]
    c.train.batch_size = r["batch_size"]
    c.train.learning_rate = r["learning_rate"]
    c.train.warmup_steps = r["warmup_steps"]
    c.train.weight_decay = 0.01  # Lighter decay than pretraining: a short run from pretrained weights.
    c.train.eval_every = 200  # Steps between evaluations (and one at the end).
    c.train.eval_steps = 0  # Validation batches per evaluation; 0 = the whole evaluation set once.
    c.train.checkpoint_every = r["steps"]  # Only the final checkpoint (these runs take seconds).
    c.train.keep_checkpoints = 1
    return c
