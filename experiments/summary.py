"""Parameters per module and training FLOPs of an experiment config, without building or compiling the model.

  python -m experiments.summary --config=experiments/configs/gpt.py:small [--config.model.n_layers=12] [--json]

The arithmetic is model/flops.py's; this command is in experiments/ because it also reads the data settings. The
vocabulary is the one a training run would use: the run replaces config.model.vocab_size by its tokenizer's size,
i.e. config.data.vocab_size for a trained tokenizer (the size of data.tokenizer's file, or of the byte tokenizer,
when those are set). Lengths: config.data.seq_len (the t5 encoder
length S) and for t5 the decoder length T, both taken from the batch shapes data.objectives.build makes (so T is
config.data.target_len, or when 0 the length span corruption needs for objective.noise_density and mean_span_length).
A published architecture (model.config.published_match: the gpt2, bert-base, t5-small and t5.1.1-small variants,
whatever vocabulary and length the run gives them) is also counted as published, at its own vocab_size and max_len
(with BERT's pooler and NSP head when objective.nsp adds them to the run); the table shows that count first.
--json prints {"params" (the run's), "published" ({"name", "vocab_size", "max_len", "params"}, or null),
"flops_per_token" (training, = 3 x forward), "flops_per_step", "breakdown", ...}.
"""

from __future__ import annotations

import json
import re
import sys

from absl import flags
from ml_collections import config_flags

from data import objectives, tokenizer
from model import flops
from model.config import ConfigError, ModelConfig, from_dict, preset, published_match
from train import errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config, e.g. experiments/configs/gpt.py:small.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
_PER_LAYER = flags.DEFINE_bool("per_layer", False, "One table row per layer instead of one per kind of module.")


def vocab_and_tokenizer(data):
    """(vocabulary size a training run would use, where it comes from, a tokenizer with the run's special tokens)."""
    if data.tokenizer:
        tok = tokenizer.load(data.tokenizer)
        return tok.vocab_size, f"data.tokenizer={data.tokenizer}", tok
    byte = tokenizer.ByteTokenizer()  # Every Triad tokenizer has the same specials, all the objectives look at.
    if data.tokenizer_type == "byte":
        return byte.vocab_size, "data.tokenizer_type='byte'", byte
    return data.vocab_size, "data.vocab_size", byte


def lengths(config, cfg: ModelConfig, tok) -> tuple[int, int]:
    """(seq_len, target_len) of the batches the data pipeline builds (target_len 0 unless cfg.arch is 't5').

    The objective (data.objectives.build) validates its settings and derives the t5 target length from
    objective.noise_density and mean_span_length when data.target_len is 0.
    """
    shapes = objectives.build(config, tok).shapes
    if cfg.arch == "t5":
        if "encoder_inputs" not in shapes:
            raise ConfigError(f"model.arch='t5' needs encoder and decoder inputs, which objective.name="
                              f"{config.objective.name!r} does not make: use objective.name='span_corruption'")
        return shapes["encoder_inputs"][0][0], shapes["decoder_inputs"][0][0]
    if "inputs" not in shapes:
        raise ConfigError(f"model.arch={cfg.arch!r} reads one token sequence; objective.name="
                          f"{config.objective.name!r} makes encoder/decoder inputs: pick another objective")
    return shapes["inputs"][0][0], 0


def summarize(config, per_layer: bool = False) -> dict:
    """The numbers of the table / JSON for an experiment ConfigDict."""
    vocab, source, tok = vocab_and_tokenizer(config.data)
    cfg = from_dict(config.model, vocab_size=vocab)
    seq_len, target_len = lengths(config, cfg, tok)
    batch = config.train.batch_size
    per_token = flops.flops_per_token(cfg, seq_len, target_len)
    name = published_match(cfg)
    pub = preset(name).replace(nsp_head=cfg.nsp_head) if name else None  # objective.nsp: the pretraining heads.
    return {
        "arch": cfg.arch,
        "params": flops.param_count(cfg),
        "published": {"name": name, "vocab_size": pub.vocab_size, "max_len": pub.max_len,
                      "params": flops.param_count(pub)} if pub else None,
        "max_len": cfg.max_len,
        "matmul_params": flops.matmul_param_count(cfg),
        "flops_per_token": per_token["train"],
        "flops_per_step": flops.training_flops_per_step(cfg, batch, seq_len, target_len),
        "forward_flops_per_token": per_token["forward"],
        "flops_per_token_detail": {k: v for k, v in per_token.items() if k != "tokens"},
        "tokens_per_example": int(per_token["tokens"]),
        "batch_size": batch,
        "seq_len": seq_len,
        "target_len": target_len,
        "vocab_size": vocab,
        "vocab_source": source,
        "breakdown": dict(flops.param_breakdown(cfg, per_layer=per_layer)),
        "layers": {"encoder": cfg.n_layers, "decoder": cfg.decoder_layers} if cfg.arch == "t5"
        else {"decoder" if cfg.arch == "gpt" else "encoder": cfg.n_layers},
    }


def _si(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3f} {unit}"
    return f"{x:.0f} "


def _published_lines(s: dict) -> list[str]:
    """For a published architecture: its published count first, the run's (the table's total) beside it."""
    pub = s["published"]
    if pub is None:
        return []
    learned = any(p.endswith("/position_embedding") for p in s["breakdown"])  # Only then max_len counts.
    sizes = lambda vocab, max_len: f"vocab_size {vocab:,}" + (f", max_len {max_len:,}" if learned else "")
    label = f"{pub['name']} as published" + (" (with the NSP head)" if "nsp" in s["breakdown"] else "")
    width = max(len(label), len("this run"))
    return [f"{label:<{width}}  {pub['params']:>12,} parameters  ({sizes(pub['vocab_size'], pub['max_len'])})",
            f"{'this run':<{width}}  {s['params']:>12,} parameters  ({sizes(s['vocab_size'], s['max_len'])}; "
            f"the modules below)",
            ""]


def table(s: dict) -> str:
    """The human-readable report of `summarize`."""
    total = s["params"]
    width = max(len(p) for p in s["breakdown"]) + 2
    lines = _published_lines(s) + [f"{'module':<{width}}{'layers':>7}{'per layer':>13}{'params':>14}{'share':>8}"]
    for path, n in s["breakdown"].items():
        m = re.match(r"(\w+)/layer(?:s|_\*)/", path)
        layers = s["layers"][m.group(1)] if m else 1
        per = f"{n // layers:,}" if m else ""
        lines.append(f"{path:<{width}}{(f'x{layers}' if m else ''):>7}{per:>13}{n:>14,}{n / total:>8.1%}")
    lines.append(f"{'total':<{width}}{'':>7}{'':>13}{total:>14,}{1:>8.0%}")
    lines.append(f"vocab_size {s['vocab_size']:,} from {s['vocab_source']} (the training run's tokenizer size; "
                 f"config.model.vocab_size is replaced by it)")
    d = s["flops_per_token_detail"]
    if s["arch"] == "t5":
        tokens = f"S + T = {s['seq_len']} + {s['target_len']} = {s['tokens_per_example']} tokens per example"
    else:
        tokens = f"L = {s['seq_len']} tokens per example"
    causal = f" [causal half {_si(d['attention_causal'])}]" if s["arch"] != "bert" else ""
    six_n = f"  (6 x matmul params = {_si(6 * s['matmul_params'])})" if s["arch"] != "t5" else ""
    lines += [
        f"FLOPs (matmuls only, 2mnk; causal attention over the full square; train = 3 x forward); {tokens}",
        f"  forward per token    {_si(d['forward'])}FLOP  (dense {_si(d['dense'])}, attention {_si(d['attention'])}"
        f"{causal}, head {_si(d['head'])})",
        f"  training per token   {_si(s['flops_per_token'])}FLOP{six_n}",
        f"  training per step    {_si(s['flops_per_step'])}FLOP  (batch_size {s['batch_size']} x "
        f"{s['tokens_per_example']} tokens)",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    with errors.one_line():
        if len(argv) > 1:
            raise errors.UserError(f"unexpected arguments {argv[1:]}; usage: python -m experiments.summary "
                                   "--config=FILE.py:VARIANT [--json]")
        s = summarize(_CONFIG.value, per_layer=_PER_LAYER.value)
    print(json.dumps(s, indent=2) if _JSON.value else table(s))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    sys.exit(errors.run_app(main))
