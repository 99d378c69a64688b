"""Defaults shared by every experiment; gpt.py, bert.py and t5.py start from `base_config(arch, size)`.

Every field lives here with a one-line comment; library code never falls back to a default of its own.
Model fields (`config.model.*`) are the fields of `model.config.ModelConfig`, documented there.
"""

import dataclasses

import ml_collections

from model import config as model_config

# Objective each architecture is trained with by default.
OBJECTIVES = {"gpt": "causal_lm", "bert": "mlm", "t5": "span_corruption"}

# Training-size presets: (seq_len, batch_size, steps, learning_rate, warmup_steps).
SIZES = {
    "tiny": dict(seq_len=128, batch_size=32, steps=300, learning_rate=3e-3, warmup_steps=30),
    "small": dict(seq_len=256, batch_size=16, steps=2000, learning_rate=1e-3, warmup_steps=100),
}


def model_dict(preset: str, arch: str | None = None) -> ml_collections.ConfigDict:
    """The ModelConfig preset as a ConfigDict, so every model field can be overridden from the command line."""
    return ml_collections.ConfigDict(dataclasses.asdict(model_config.preset(preset, arch=arch)))


# Published architectures each config file offers as a variant (trained at the `small` training size).
PUBLISHED = {"gpt": ("gpt2",), "bert": ("bert-base",), "t5": ("t5-small", "t5.1.1-small")}


def get_config(arch: str, variant: str) -> ml_collections.ConfigDict:
    """`variant` is a training size ('tiny', 'small') or a published architecture of `arch` (e.g. 'gpt2')."""
    if variant in PUBLISHED[arch]:
        config = base_config(arch, "small")
        config.model = model_dict(variant)
        config.model.max_len = max(config.model.max_len, config.data.seq_len)
        return link_objective(config)
    if variant not in SIZES:
        raise ValueError(f"unknown variant {variant!r} for {arch}; choose one of {[*SIZES, *PUBLISHED[arch]]}")
    return base_config(arch, variant)


def link_objective(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Makes model.nsp_head one value with objective.nsp (a FieldReference: setting either sets both), so every
    ModelConfig made from config.model has the head exactly when the objective trains it."""
    c.model.nsp_head = c.objective.get_ref("nsp")
    return c


def base_config(arch: str, size: str = "tiny") -> ml_collections.ConfigDict:
    """The full experiment config for `arch` ('gpt', 'bert', 't5') at a training size ('tiny', 'small')."""
    s = SIZES[size]
    c = ml_collections.ConfigDict()
    c.seed = 0  # Seeds parameter init, dropout and every batch (batches are a function of seed and step).
    c.init_from = ""  # Workdir or checkpoint directory whose parameters start this run ('' = random init).
    c.parallel = "jit"  # 'jit' (sharded over config.mesh) or 'pmap' (pure data parallelism, replicated state).

    c.data = ml_collections.ConfigDict()
    c.data.corpus = "modern"  # Bundled corpus read when train_files is '': 'modern' (27 books, 1905-1930) or 'kjv'.
    c.data.train_files = ""  # Paths or globs, comma-separated: .txt .jsonl .parquet [.gz .zst]; '' = data.corpus.
    c.data.val_files = ""  # Same form; '' carves the validation split out of train_files.
    c.data.val_fraction = 0.05  # Fraction of documents held out when val_files is '' (and for data.corpus=kjv).
    c.data.txt_documents = "line"  # In .txt files one document is a 'line' or a blank-line separated 'paragraph'.
    c.data.jsonl_field = "text"  # Field of each .jsonl record holding the document text.
    c.data.parquet_column = "text"  # Column of .parquet files holding the document text.
    c.data.tokenizer = ""  # Path of a SentencePiece .model to use; '' trains one on the training split.
    c.data.tokenizer_type = "unigram"  # 'unigram', 'bpe' or 'byte' (UTF-8 bytes, no training) when training.
    c.data.vocab_size = 8000  # Vocabulary size of a trained tokenizer, special tokens included.
    c.data.cache_dir = ""  # Where tokenizers and token stores are kept; '' = $TRIAD_CACHE or ~/.cache/triad.
    c.data.num_workers = 0  # Processes that tokenize a corpus into its store (0 = one per core, one per file at most).
    c.data.shard_tokens = 1 << 24  # A store part is written when either split has this many tokens (2 bytes each).
    c.data.tokenizer_sample_mb = 64  # Text SentencePiece trains on: the first 64/n MB of each of n training files.
    c.data.seq_len = s["seq_len"]  # Tokens per example (encoder input length for t5).
    c.data.target_len = 0  # t5 decoder length; 0 derives it from seq_len, noise_density and mean_span_length.
    c.data.prefetch = 2  # Batches prepared ahead by a background thread.
    c.data.document_mask = False  # Attention stays inside each document and positions restart at each one.

    c.objective = ml_collections.ConfigDict()
    c.objective.name = OBJECTIVES[arch]  # 'causal_lm', 'prefix_lm', 'mlm' or 'span_corruption'.
    c.objective.mask_rate = 0.15  # mlm: fraction of tokens selected for prediction.
    c.objective.mask_token_frac = 0.8  # mlm: of the selected, fraction replaced by [MASK].
    c.objective.random_token_frac = 0.1  # mlm: of the selected, fraction replaced by a random token.
    c.objective.whole_word = False  # mlm: select whole words (all their pieces, one 80/10/10 draw per word).
    c.objective.nsp = False  # bert: add next-sentence prediction on [CLS] A [SEP] B [SEP] pairs (sets model.nsp_head).
    c.objective.noise_density = 0.15  # span_corruption: fraction of tokens inside noise spans.
    c.objective.mean_span_length = 3.0  # span_corruption: mean length of a noise span.
    c.objective.label_smoothing = 0.0  # Cross-entropy label smoothing.
    c.objective.z_loss = 0.0  # Coefficient of the log(Z)^2 auxiliary loss (PaLM uses 1e-4).

    c.model = model_dict(size, arch=arch)  # Fields of model.config.ModelConfig (vocab_size comes from the tokenizer).
    c.model.max_len = max(c.model.max_len, s["seq_len"])
    link_objective(c)

    c.train = ml_collections.ConfigDict()
    c.train.steps = s["steps"]  # Optimizer updates in the run.
    c.train.batch_size = s["batch_size"]  # Global batch size in examples (across all devices and processes).
    c.train.microbatches = 1  # Gradient accumulation: the batch is split into this many sequential microbatches.
    c.train.learning_rate = s["learning_rate"]  # Peak learning rate.
    c.train.warmup_steps = s["warmup_steps"]  # Linear warmup from 0 to the peak.
    c.train.schedule = "cosine"  # After warmup: 'cosine', 'linear', 'rsqrt', 'constant' or 'wsd' (warmup-stable-decay).
    c.train.min_lr_ratio = 0.1  # Final learning rate as a fraction of the peak (cosine, linear and wsd).
    c.train.decay_fraction = 0.2  # wsd: the last fraction of train.steps spent decaying (in (0, 1]; not in warmup).
    c.train.decay_shape = "1-sqrt"  # wsd: 'linear' or '1-sqrt' (peak - (peak - end) sqrt(t); Hägele et al. 2024).
    c.train.optimizer = "adamw"  # 'adamw', 'adafactor', 'sgd' (with momentum), 'muon' or 'lion'; see train/optim.py.
    c.train.b1 = 0.9  # Adam beta1.
    c.train.b2 = 0.95  # Adam beta2.
    c.train.eps = 1e-8  # Adam epsilon.
    c.train.momentum = 0.9  # SGD momentum.
    c.train.muon_learning_rate = 0.02  # muon: peak rate of the block matrices (the rest: AdamW at learning_rate).
    c.train.muon_momentum = 0.95  # muon: momentum of the gradients that Newton-Schulz orthogonalises.
    c.train.muon_nesterov = True  # muon: orthogonalise the Nesterov look-ahead of the momentum.
    c.train.muon_ns_steps = 5  # muon: Newton-Schulz iterations (optax's quintic coefficients 3.4445, -4.775, 2.0315).
    c.train.muon_consistent_rms = 0.0  # muon: 0 = scale by sqrt(max(1, out/in)) (rate ~0.02); r: RMS r (0.2 ~ AdamW).
    c.train.lion_b1 = 0.9  # lion: update sign(b1 m + (1-b1) g); wants ~3-10x lower rate, ~3-10x more decay than AdamW.
    c.train.lion_b2 = 0.99  # lion: decay of the momentum m (m = b2 m + (1 - b2) g after each update).
    c.train.weight_decay = 0.1  # Decoupled decay, times the scheduled rate of the kernel's group (muon's or AdamW's).
    c.train.decay_embeddings = False  # Also decay the embedding tables (tokens, positions, types, t5 buckets).
    c.train.grad_clip = 1.0  # Global gradient-norm clip (0 disables).
    c.train.log_every = 10  # Steps between metric lines.
    c.train.eval_every = 100  # Steps between evaluations (and one at the end).
    c.train.eval_steps = 8  # Validation batches per evaluation.
    c.train.checkpoint_every = 100  # Steps between checkpoints (and one at the end).
    c.train.keep_checkpoints = 3  # Checkpoints kept on disk.
    c.train.nonfinite = "stop"  # On a non-finite loss or gradient: 'stop' the run or 'skip' the update.
    c.train.progress_bar = True  # Progress bar on an interactive terminal (plain log lines otherwise).

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # Data-parallel axis size (-1: the devices left over by the other axes).
    c.mesh.fsdp = 1  # Axis over which parameters and optimizer state are sharded (and the batch too).
    c.mesh.tensor = 1  # Tensor-parallel axis: splits heads and MLP hidden units.
    return c
