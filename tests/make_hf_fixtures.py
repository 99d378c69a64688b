"""Makes the Hugging Face parity fixtures of tests/test_hf.py: tiny random GPT-2, BERT, T5 v1.0 and T5 v1.1
models saved with `save_pretrained` (config.json + model.safetensors) and reference.npz (their inputs and float32
logits). Needs torch and transformers, so it is run by hand, not in CI, from a separate venv:

  python3.11 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch==2.13.0 transformers safetensors numpy
  /tmp/hfvenv/bin/python tests/make_hf_fixtures.py                 # rewrites tests/fixtures/hf/
  /tmp/hfvenv/bin/python tests/make_hf_fixtures.py --out /tmp/hf --seed 7 --d_model 48 --heads 6 --layers 3

reference.npz holds the model inputs (pad id 0: BERT inputs and T5 encoder inputs end in padding, and the HF
attention_mask is `ids != 0`, the rule Triad's models use), `logits` (B, L, V) computed by transformers from the
saved files (reloaded with from_pretrained, eval mode, float32) and `valid` (B, L): the positions to compare.
T5 decoder inputs start with the decoder start token 0 and are never masked.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np
import torch
import transformers

ROOT = os.path.dirname(os.path.abspath(__file__))


def _lengths(rng: np.random.Generator, batch: int, length: int) -> list[int]:
    """Row lengths: a full row, then shorter ones (the rest is padding)."""
    return [length] + sorted(rng.integers(3, length, batch - 1).tolist(), reverse=True)


def _padded(rng: np.random.Generator, lengths: list[int], length: int, low: int, vocab: int) -> np.ndarray:
    ids = np.zeros((len(lengths), length), np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(low, vocab, n)
    return ids


def _perturb(model: torch.nn.Module, seed: int, scale: float) -> None:
    """Random vectors (norm scales, biases; all zeros or ones at init) so the test sees every mapping."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def _specs(a: argparse.Namespace) -> dict:
    d, h, n, v = a.d_model, a.heads, a.layers, a.vocab
    return {
        "gpt2": transformers.GPT2Config(
            vocab_size=v, n_positions=a.max_len, n_embd=d, n_layer=n, n_head=h, activation_function="gelu_new",
            initializer_range=0.1, bos_token_id=v - 1, eos_token_id=v - 1),
        "bert": transformers.BertConfig(
            vocab_size=v, hidden_size=d, num_hidden_layers=n, num_attention_heads=h, intermediate_size=2 * d,
            max_position_embeddings=a.max_len, type_vocab_size=2, hidden_act="gelu", pad_token_id=0,
            initializer_range=0.1),
        "t5": transformers.T5Config(
            vocab_size=v, d_model=d, d_kv=d // h, d_ff=2 * d, num_layers=n, num_decoder_layers=n, num_heads=h,
            relative_attention_num_buckets=8, relative_attention_max_distance=12, feed_forward_proj="relu",
            tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
        # v1.1: gated-gelu, untied head, head width != d_model / heads, fewer decoder than encoder layers.
        "t5_v1_1": transformers.T5Config(
            vocab_size=v, d_model=d, d_kv=3 * d // (2 * h), d_ff=3 * d // 2, num_layers=n,
            num_decoder_layers=max(1, n - 1),
            num_heads=h, relative_attention_num_buckets=8, relative_attention_max_distance=12,
            feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0),
    }


_CLASSES = {"gpt2": transformers.GPT2LMHeadModel, "bert": transformers.BertForMaskedLM,
            "t5": transformers.T5ForConditionalGeneration, "t5_v1_1": transformers.T5ForConditionalGeneration}


def make(name: str, config, out: str, seed: int, attn: str) -> dict:
    """Builds, saves and runs one model; returns reference.npz's arrays."""
    torch.manual_seed(seed)
    model = _CLASSES[name](config)
    _perturb(model, seed, 0.1)
    rng = np.random.default_rng(seed)
    if name == "t5_v1_1":  # transformers 5 ties T5 heads at init; a v1.1 checkpoint has its own lm_head.
        model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape) * config.d_model**-0.5)
    path = os.path.join(out, name)
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path, safe_serialization=True)
    for extra in set(os.listdir(path)) - {"config.json", "model.safetensors"}:
        os.remove(os.path.join(path, extra))
    if name == "t5_v1_1":  # The published v1.1 config.json (transformers 4): tie_word_embeddings=false, no scaling.
        cpath = os.path.join(path, "config.json")
        with open(cpath) as f:
            c = json.load(f)
        c.pop("scale_decoder_outputs", None)
        c["tie_word_embeddings"] = False
        with open(cpath, "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)

    # The reference is what transformers computes from the saved files.
    model = _CLASSES[name].from_pretrained(path, attn_implementation=attn, dtype=torch.float32).eval()
    v, length = config.vocab_size, 16  # Fits --max_len (positions) >= 16.
    with torch.no_grad():
        if name == "gpt2":
            inputs = rng.integers(0, v, (2, length))
            logits = model(input_ids=torch.tensor(inputs)).logits
            arrays = dict(inputs=inputs, valid=np.ones(inputs.shape, bool))
        elif name == "bert":
            inputs = _padded(rng, _lengths(rng, 3, length), length, 1, v)
            types = np.where(np.arange(length) >= length // 2, 1, 0)[None] * (inputs != 0)
            mask = inputs != 0
            logits = model(input_ids=torch.tensor(inputs), attention_mask=torch.tensor(mask.astype(np.int64)),
                           token_type_ids=torch.tensor(types)).logits
            arrays = dict(inputs=inputs, token_types=types, attention_mask=mask, valid=mask)
        else:
            enc = _padded(rng, _lengths(rng, 3, 20), 20, 2, v)
            dec = np.concatenate([np.zeros((3, 1), np.int64), rng.integers(2, v, (3, 13))], axis=1)
            logits = model(input_ids=torch.tensor(enc), attention_mask=torch.tensor((enc != 0).astype(np.int64)),
                           decoder_input_ids=torch.tensor(dec)).logits
            arrays = dict(encoder_inputs=enc, decoder_inputs=dec, encoder_attention_mask=enc != 0,
                          valid=np.ones(dec.shape, bool))
    arrays = {k: (x.astype(np.int32) if x.dtype == np.int64 else x) for k, x in arrays.items()}
    arrays["logits"] = logits.numpy().astype(np.float32)
    np.savez_compressed(os.path.join(path, "reference.npz"), **arrays)
    return arrays


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "fixtures", "hf"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--d_model", type=int, default=32)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--max_len", type=int, default=32)
    p.add_argument("--attn", default="eager", help="transformers attention implementation: eager or sdpa")
    p.add_argument("--only", default="", help="comma-separated subset of gpt2,bert,t5,t5_v1_1")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    specs = _specs(a)
    for i, name in enumerate(a.only.split(",") if a.only else specs):
        arrays = make(name, specs[name], a.out, a.seed + i, a.attn)
        size = sum(os.path.getsize(os.path.join(a.out, name, f)) for f in os.listdir(os.path.join(a.out, name)))
        print(f"{name}: logits {arrays['logits'].shape}, max |logit| {np.abs(arrays['logits']).max():.3f}, "
              f"{size / 1024:.0f} KiB")
    with open(os.path.join(a.out, "README.md"), "w") as f:
        f.write(f"Tiny random Hugging Face models and their logits for tests/test_hf.py, made by "
                f"tests/make_hf_fixtures.py (seed {a.seed}, d_model {a.d_model}, heads {a.heads}, layers "
                f"{a.layers}, vocab {a.vocab}, attention {a.attn}) with transformers {transformers.__version__} "
                f"and torch {torch.__version__}.\n")


if __name__ == "__main__":
    main()
