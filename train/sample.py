"""Samples from a workdir: continuations (gpt), filled sentinel spans (t5) or fill-mask candidates (bert).

  python -m train.sample --workdir=runs/gpt --prompt="And God said" --max_new_tokens=50
  python -m train.sample --workdir=runs/gpt --prompts_file=prompts.txt --temperature=0.8 --top_p=0.9
  python -m train.sample --workdir=runs/t5 --prompt="In the <extra_id_0> God created the heaven"
  python -m train.sample --workdir=runs/bert --text="the [MASK] of the lord" --top_k=5
  python -m train.sample --workdir=runs/gpt2-hf --ids=15496,995      # a workdir without a tokenizer
  python -m train.sample --workdir=runs/gpt --neighbours=king          # or --analogy=man:king::woman
  python -m train.sample --workdir=runs/gpt --text="And God said" --attention_png=att.png   # (train/introspect.py)
  (--quantize=int8 runs any of these with int8-quantized weights)

Text is encoded as in training: a gpt prompt starts with eos (documents follow an eos in the training stream),
a t5 prompt ends with eos, a bert text is wrapped in [CLS] ... [SEP]; the space before a [MASK] or a sentinel
belongs to the hidden token (the tokenizer has no dummy prefix), so "the [MASK] of" masks " light", not "light".
Workdirs are loaded by train/workdir.py's `load_workdir`.
"""

from __future__ import annotations

import os
import re
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging

from model import decoding, quantize
from train import errors
from train.errors import fail
from train.workdir import load_workdir

flags.DEFINE_string("workdir", None, "Workdir written by train.main or experiments.hf_import.")
flags.DEFINE_string("prompt", None, "gpt: text to continue; t5: encoder input (sentinels <extra_id_N> get filled).")
flags.DEFINE_string("prompts_file", None, "File with one prompt per line (blank lines skipped), run as one batch.")
flags.DEFINE_string("ids", None, "Token ids instead of text: '1,2,3' (';' separates prompts); as is, no eos added.")
flags.DEFINE_string("text", None, "bert: text with [MASK]s to fill, e.g. 'the [MASK] of the lord'.")
flags.DEFINE_integer("max_new_tokens", 50, "Tokens to generate per sample (fewer if eos comes first).")
flags.DEFINE_float("temperature", 0.0, "Softmax temperature; 0 = greedy (deterministic).")
flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens (0 = all); bert: candidates shown (0 = 5).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: the smallest set of tokens with probability >= top_p.")
flags.DEFINE_integer("seed", 0, "Seed of the sampling randomness.")
flags.DEFINE_bool("no_cache", False, "Recompute the whole sequence every step instead of using the KV cache.")
flags.DEFINE_integer("num_samples", 1, "Samples per prompt (needs --temperature > 0).")
flags.DEFINE_string("neighbours", None, "Print the nearest tokens to this word by input-embedding cosine.")
flags.DEFINE_string("analogy", None, "Print the answers of a:b::c (b - a + c), e.g. man:king::woman.")
flags.DEFINE_string("attention_png", None, "With --text: write its attention maps (layers x heads) to this PNG.")
flags.DEFINE_enum("quantize", "none", ["none", "int8"], "Run with int8-quantized weights (model/quantize.py).")
FLAGS = flags.FLAGS

_SPECIAL = re.compile(r"(\[MASK\]|<extra_id_\d\d?>)")
_BERT_CANDIDATES = 5



# ---- Text <-> ids. ----

def encode_text(tok, text: str) -> list[int]:
    """Ids of `text` with '[MASK]' and '<extra_id_N>' as their special ids; the space just before one belongs to
    the hidden token (as in training, where the masked or dropped token carried its leading space)."""
    ids: list[int] = []
    parts = _SPECIAL.split(text)
    for i, part in enumerate(parts):
        if i % 2:
            ids.append(tok.mask_id if part == "[MASK]" else tok.sentinel_id(int(part[len("<extra_id_"):-1])))
        elif part:
            ids += tok.encode(part[:-1] if part.endswith(" ") and i + 1 < len(parts) else part)
    return ids


def until_eos(ids, eos_id: int, pad_id: int) -> list[int]:
    """Generated ids up to and including the first eos, pad dropped."""
    out = []
    for i in (int(x) for x in ids):
        if i == pad_id:
            break
        out.append(i)
        if i == eos_id:
            break
    return out


def fill_spans(tok, prompt_ids: list[int], output_ids: list[int]) -> tuple[dict[int, list[int]], list[int]]:
    """T5: ({sentinel id: span ids} parsed from the output, prompt ids with each sentinel replaced by its span;
    a sentinel the output does not fill stays in place)."""
    sentinels = set(tok.sentinel_ids.tolist())
    spans: dict[int, list[int]] = {}
    current = None
    for i in output_ids:
        if i == tok.eos_id:
            break
        if i in sentinels:
            current = i
            spans.setdefault(i, [])
        elif current is not None:
            spans[current].append(i)
    filled = [x for i in prompt_ids for x in (spans.get(i, [i]) if i in sentinels else [i])]
    return spans, filled


# ---- The three modes. ----

class _CompileClock:
    """Seconds JAX spends tracing and compiling while active (jax.monitoring events), to keep them out of tokens/s."""

    _active: list = []
    _registered = False

    def __enter__(self):
        if not _CompileClock._registered:
            jax.monitoring.register_event_duration_secs_listener(_CompileClock._listen)
            _CompileClock._registered = True
        self.seconds = 0.0
        _CompileClock._active.append(self)
        return self

    def __exit__(self, *exc):
        _CompileClock._active.remove(self)

    @staticmethod
    def _listen(event: str, duration: float, **kwargs) -> None:
        if event.startswith("/jax/core/compile/"):
            for clock in _CompileClock._active:
                clock.seconds += duration


def _prompts(opts: dict, tok, arch: str) -> tuple[list[str], list[list[int]]]:
    """(labels, ids) of the prompts given by --prompt, --prompts_file or --ids."""
    given = [k for k in ("prompt", "prompts_file", "ids") if opts.get(k) is not None]
    if not given:
        fail(f"nothing to sample from: pass --prompt, --prompts_file or --ids (this is a {arch} workdir)")
    if len(given) > 1:
        fail(f"pass only one of {', '.join('--' + g for g in given)}")
    if opts.get("ids") is not None:
        try:
            rows = [[int(x) for x in r.split(",") if x.strip()] for r in opts["ids"].split(";")]
        except ValueError:
            fail(f"--ids={opts['ids']!r} is not comma-separated integers (';' between prompts)")
        return [" ".join(map(str, r)) for r in rows], rows
    if tok is None:
        fail(f"--workdir={opts['workdir']} has no tokenizer (an imported model; Triad does not read Hugging Face "
             "tokenizers): pass token ids with --ids=1,2,3")
    if opts.get("prompts_file") is not None:
        if not os.path.isfile(opts["prompts_file"]):
            fail(f"--prompts_file={opts['prompts_file']} does not exist")
        with open(opts["prompts_file"], encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f if line.strip()]
        if not texts:
            fail(f"--prompts_file={opts['prompts_file']} has no non-blank line")
    else:
        texts = [opts["prompt"]]
    if arch == "gpt":  # documents follow an eos in the training stream
        return texts, [[tok.eos_id] + encode_text(tok, t) for t in texts]
    return texts, [encode_text(tok, t) + [tok.eos_id] for t in texts]


def _check_ids(rows: list[list[int]], vocab_size: int, max_len: int, what: str, budget_hint: str = "") -> None:
    for r in rows:
        bad = [i for i in r if not 0 <= i < vocab_size]
        if bad:
            fail(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
        if len(r) > max_len:
            fail(f"{what} is {len(r)} tokens, longer than model.max_len={max_len}: shorten it{budget_hint}")


def _text(tok, ids: list[int]) -> str:
    return tok.decode(ids) if tok is not None else " ".join(map(str, ids))


def _generate(opts: dict, cfg, model, params, tok, out) -> None:
    labels, rows = _prompts(opts, tok, cfg.arch)
    n_new, n_samples = opts["max_new_tokens"], opts["num_samples"]
    if n_new < 1:
        fail(f"--max_new_tokens={n_new} must be >= 1")
    if n_samples < 1:
        fail(f"--num_samples={n_samples} must be >= 1")
    if n_samples > 1 and opts["temperature"] == 0:
        fail(f"--num_samples={n_samples} with --temperature=0 (greedy) gives identical samples: set "
             "--temperature > 0")
    for name, ok, need in (("temperature", opts["temperature"] >= 0, ">= 0"), ("top_k", opts["top_k"] >= 0, ">= 0"),
                           ("top_p", 0 < opts["top_p"] <= 1, "in (0, 1]")):
        if not ok:
            fail(f"--{name}={opts[name]} must be {need}")
    what = "the prompt" + (" (with its eos)" if opts.get("ids") is None else "")
    _check_ids(rows, cfg.vocab_size, cfg.max_len, what)
    if cfg.arch == "gpt":
        if any(not r for r in rows):
            fail("an --ids prompt is empty: a gpt prompt needs at least one token (e.g. the eos id)")
        longest = max(map(len, rows))
        if longest + n_new - 1 > cfg.max_len:
            fail(f"{what} is {longest} tokens; with --max_new_tokens={n_new} that needs {longest + n_new - 1} "
                 f"positions but model.max_len={cfg.max_len}: lower --max_new_tokens to at most "
                 f"{cfg.max_len - longest + 1} or shorten the prompt")
    elif n_new > cfg.max_len:
        fail(f"--max_new_tokens={n_new} exceeds the decoder's model.max_len={cfg.max_len}: lower it")

    batch = [r for r in rows for _ in range(n_samples)]
    width = max(1, max(map(len, batch)))
    ids = np.full((len(batch), width), cfg.pad_id, np.int32)
    for b, r in enumerate(batch):
        ids[b, :len(r)] = r
    kw = dict(max_new_tokens=n_new, rng=jax.random.key(opts["seed"]), temperature=opts["temperature"],
              top_k=opts["top_k"], top_p=opts["top_p"], eos_id=None if tok is None else tok.eos_id,
              use_cache=not opts["no_cache"])
    with _CompileClock() as clock:
        start = time.perf_counter()
        if cfg.arch == "gpt":
            gen = decoding.generate(model, params, ids, [len(r) for r in batch], **kw)
        else:
            gen = decoding.generate_seq2seq(model, params, ids, **kw)
        gen = np.asarray(jax.device_get(gen))
        seconds = time.perf_counter() - start
    eos = -1 if tok is None else tok.eos_id
    outputs = [until_eos(g, eos, cfg.pad_id) for g in gen]

    for p, (label, prompt_ids) in enumerate(zip(labels, rows, strict=True)):
        out(f"prompt {p + 1}: {label}")
        for s in range(n_samples):
            gen_ids = outputs[p * n_samples + s]
            out(f"  sample {s + 1}: {_text(tok, gen_ids)}")
            if opts.get("ids") is not None and tok is not None:
                out(f"    ids: {' '.join(map(str, gen_ids))}")
            if cfg.arch == "t5" and tok is not None:
                spans, filled = fill_spans(tok, prompt_ids, gen_ids)
                asked = [i for i in prompt_ids if i in set(tok.sentinel_ids.tolist())]
                for sid in asked:
                    shown = repr(tok.decode(spans[sid])) if sid in spans else "(not generated)"
                    out(f"    {tok.id_to_piece(sid)} = {shown}")
                if asked:
                    out(f"    filled: {tok.decode([i for i in filled if i != tok.eos_id])}")
    n_tokens = sum(map(len, outputs))
    run_s = max(seconds - clock.seconds, 1e-9)
    mode = "no cache" if opts["no_cache"] else "KV cache"
    out(f"tokens/s: {n_tokens / run_s:.1f} ({n_tokens} tokens in {run_s:.3f} s, {mode}, batch {len(batch)}; "
        f"{clock.seconds:.2f} s of compilation not counted)")


def _fill_mask(opts: dict, cfg, model, params, tok, out) -> None:
    if tok is None:
        fail(f"--workdir={opts['workdir']} has no tokenizer, so [MASK] has no id here: fill-mask needs a workdir "
             "trained by train.main")
    if opts.get("prompts_file") is None and opts.get("text") is None:
        fail("nothing to fill: pass --text='... [MASK] ...' (or --prompts_file, one text per line)")
    if opts.get("text") is not None and opts.get("prompts_file") is not None:
        fail("pass only one of --text, --prompts_file")
    if opts.get("prompts_file") is not None:
        if not os.path.isfile(opts["prompts_file"]):
            fail(f"--prompts_file={opts['prompts_file']} does not exist")
        with open(opts["prompts_file"], encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f if line.strip()]
    else:
        texts = [opts["text"]]
    k = opts["top_k"] or _BERT_CANDIDATES
    rows = [[tok.cls_id] + encode_text(tok, t) + [tok.sep_id] for t in texts]
    for t, r in zip(texts, rows, strict=True):
        if tok.mask_id not in r:
            fail(f"--text={t!r} has no [MASK] to fill")
    _check_ids(rows, cfg.vocab_size, cfg.max_len, "the text (with [CLS] and [SEP])")
    ids = np.full((len(rows), max(map(len, rows))), cfg.pad_id, np.int32)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = r
    logits = jax.jit(model.apply)({"params": params}, ids)
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    for text, r, p in zip(texts, rows, probs, strict=True):
        out(f"text: {text}")
        filled = list(r)
        for n, pos in enumerate(i for i, x in enumerate(r) if x == tok.mask_id):
            best = np.argsort(np.where(tok.is_special, np.inf, -p[pos]), kind="stable")[:k]  # no specials
            filled[pos] = int(best[0])
            shown = ", ".join(f"{tok.decode([int(c)])!r} {p[pos, c]:.3f}" for c in best)
            out(f"  [MASK] {n + 1}: {shown}")
        out(f"  filled: {tok.decode(filled[1:-1])}")


def sample(workdir: str, out=print, **opts) -> None:
    """What `python -m train.sample` does, callable in-process; opts are the flags (see the flag definitions)."""
    defaults = dict(prompt=None, prompts_file=None, ids=None, text=None, max_new_tokens=50, temperature=0.0,
                    top_k=0, top_p=1.0, seed=0, no_cache=False, num_samples=1, quantize="none", neighbours=None,
                    analogy=None, attention_png=None)
    unknown = set(opts) - set(defaults)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")
    opts = {**defaults, **opts, "workdir": workdir}
    _, cfg, model, params, tok = load_workdir(workdir)
    if opts["quantize"] == "int8":  # Simulated: int8 weights, dequantized for float compute.
        params = quantize.quantize_dequantize(params)
    elif opts["quantize"] != "none":
        fail(f"--quantize={opts['quantize']!r} is unknown: choose 'none' or 'int8'")
    if opts["neighbours"] or opts["analogy"] or opts["attention_png"]:
        from train import introspect  # imports matplotlib: only when a picture or a probe is asked for

        if opts["neighbours"] or opts["analogy"]:
            introspect.embedding_probes(tok, params, out, opts["neighbours"], opts["analogy"], opts["top_k"] or 10)
        if opts["attention_png"]:
            if not opts["text"]:
                fail("--attention_png needs --text='...' (the text whose attention to draw)")
            introspect.attention_png(opts["attention_png"], opts["text"], cfg, model, params, tok, out)
        return
    if cfg.arch == "bert":
        for name in ("prompt", "ids"):
            if opts[name] is not None:
                fail(f"--workdir={workdir} holds a bert model (masked LM), which does not generate: use "
                     f"--text='... [MASK] ...' instead of --{name}")
        _fill_mask(opts, cfg, model, params, tok, out)
    else:
        if opts["text"] is not None:
            fail(f"--text is fill-mask for bert workdirs; --workdir={workdir} holds a {cfg.arch} model: use "
                 "--prompt or --prompts_file")
        _generate(opts, cfg, model, params, tok, out)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every step of a restore at INFO.
    with errors.one_line():
        sample(FLAGS.workdir, prompt=FLAGS.prompt, prompts_file=FLAGS.prompts_file, ids=FLAGS.ids, text=FLAGS.text,
               max_new_tokens=FLAGS.max_new_tokens, temperature=FLAGS.temperature, top_k=FLAGS.top_k,
               top_p=FLAGS.top_p, seed=FLAGS.seed, no_cache=FLAGS.no_cache, num_samples=FLAGS.num_samples,
               quantize=FLAGS.quantize, neighbours=FLAGS.neighbours, analogy=FLAGS.analogy,
               attention_png=FLAGS.attention_png)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    sys.exit(errors.run_app(main))
