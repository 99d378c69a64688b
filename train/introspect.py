"""Looking inside a trained model: embedding neighbours and analogies, attention maps as a PNG (train.sample flags).

  python -m train.sample --workdir=runs/gpt --neighbours=king
  python -m train.sample --workdir=runs/gpt --analogy=man:king::woman
  python -m train.sample --workdir=runs/gpt --text="And God said" --attention_png=att.png
"""

from __future__ import annotations

import numpy as np

from train import errors


def word_vector(tok, table_VxD: np.ndarray, word: str) -> tuple[np.ndarray, list[int]]:
    """(D,) input embedding of `word` (the mean over its pieces if it is several tokens) and its piece ids.

    Words are encoded with a leading space (' king'), as they appear inside a sentence; if that is no single
    piece but the bare word is, the bare word is used.
    """
    ids = tok.encode(" " + word)
    bare = tok.encode(word)
    if len(ids) > 1 and len(bare) == 1:
        ids = bare
    if not ids:
        raise errors.UserError(f"{word!r} encodes to no tokens")
    return table_VxD[ids].mean(0), ids


def nearest(table_VxD: np.ndarray, vec_D: np.ndarray, exclude, k: int, is_special) -> list[tuple[int, float]]:
    """The k (id, cosine similarity) nearest to vec_D, skipping `exclude` ids and special tokens."""
    norms = np.linalg.norm(table_VxD, axis=1) * np.linalg.norm(vec_D) + 1e-9
    cos = table_VxD @ vec_D / norms
    cos = np.where(is_special, -np.inf, cos)
    cos[list(exclude)] = -np.inf
    best = np.argsort(-cos, kind="stable")[:k]
    return [(int(i), float(cos[i])) for i in best]


def _describe(tok, word: str, ids: list[int]) -> str:
    if len(ids) == 1:
        return repr(word)
    return f"{word!r} (averaged over its {len(ids)} tokens {[tok.id_to_piece(i) for i in ids]})"


def embedding_probes(tok, params, out, neighbours: str | None = None, analogy: str | None = None, k: int = 10):
    """Prints the nearest tokens of a word, and/or the answers of an analogy a:b::c (b - a + c)."""
    if tok is None:
        raise errors.UserError("embedding probes need a workdir with a tokenizer")
    table = np.asarray(params["embed"]["embedding"], np.float32)
    show = lambda hits: ", ".join(f"{tok.decode([i])!r} {c:.3f}" for i, c in hits)
    if neighbours:
        vec, ids = word_vector(tok, table, neighbours)
        out(f"nearest to {_describe(tok, neighbours, ids)} (cosine, input embeddings):")
        out("  " + show(nearest(table, vec, ids, k, tok.is_special)))
    if analogy:
        parts = analogy.replace("::", ":").split(":")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise errors.UserError(f"--analogy={analogy!r} must look like man:king::woman")
        (va, ia), (vb, ib), (vc, ic) = (word_vector(tok, table, p.strip()) for p in parts)
        a, b, c = (p.strip() for p in parts)
        out(f"{_describe(tok, b, ib)} - {_describe(tok, a, ia)} + {_describe(tok, c, ic)}:")
        out("  " + show(nearest(table, vb - va + vc, set(ia + ib + ic), k, tok.is_special)))


def attention_maps(model, params, cfg, inputs: tuple) -> dict[str, np.ndarray]:
    """{'encoder self-attention' | 'decoder self-attention' | 'cross-attention': (layers, H, Lq, Lk)} of row 0."""
    _, state = model.apply({"params": params}, *inputs, mutable=["intermediates"])
    names = {("encoder", "self_attention"): "encoder self-attention",
             ("decoder", "self_attention"): "decoder self-attention" if cfg.arch == "t5" else "self-attention",
             ("decoder", "cross_attention"): "cross-attention"}
    out = {}
    for (stack, kind), title in names.items():
        layers = state["intermediates"].get(stack)
        if layers is None:
            continue
        if "layers" in layers:  # scan_layers: one stacked (layers, B, H, Lq, Lk) array.
            maps = np.asarray(layers["layers"][kind]["attention_weights"][0])[:, 0]
        elif kind in layers.get("layer_0", {}):
            maps = np.stack([np.asarray(layers[f"layer_{i}"][kind]["attention_weights"][0])[0]
                             for i in range(len(layers))])
        else:
            continue
        out[title] = maps
    return out


def write_attention_png(path: str, maps: dict[str, np.ndarray], labels: dict[str, tuple[list[str], list[str]]]):
    """A grid per map kind (rows: layers, columns: heads), queries down the y axis, keys along x, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sum(m.shape[0] for m in maps.values())
    heads = max(m.shape[1] for m in maps.values())
    L = max(max(m.shape[2:]) for m in maps.values())
    cell = max(2.5, 0.22 * L)
    fig, axes = plt.subplots(rows, heads, figsize=(cell * heads, cell * rows), squeeze=False)
    r = 0
    for title, m in maps.items():
        q_labels, k_labels = labels[title]
        for layer in range(m.shape[0]):
            for h in range(heads):
                ax = axes[r, h]
                if h >= m.shape[1]:
                    ax.axis("off")
                    continue
                ax.imshow(m[layer, h], cmap="viridis", vmin=0, vmax=1)
                ax.set_xticks(range(len(k_labels)), k_labels, rotation=90, fontsize=6)
                ax.set_yticks(range(len(q_labels)), q_labels, fontsize=6)
                ax.set_title(f"{title} L{layer} H{h}", fontsize=8)
            r += 1
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def attention_png(path: str, text: str, cfg, model, params, tok, out) -> dict[str, np.ndarray]:
    """Encodes `text` as in training (gpt: eos + text; bert: [CLS] text [SEP]; t5: text + eos into the encoder,
    start + text into the decoder), writes the maps to `path` and returns them."""
    if tok is None:
        raise errors.UserError("attention maps need a workdir with a tokenizer (pass --text)")
    ids = tok.encode(text)
    if cfg.arch == "gpt":
        rows = {"self": [tok.eos_id] + ids}
        inputs = (np.asarray([rows["self"]], np.int32),)
    elif cfg.arch == "bert":
        rows = {"self": [tok.cls_id] + ids + [tok.sep_id]}
        inputs = (np.asarray([rows["self"]], np.int32),)
    else:
        rows = {"enc": ids + [tok.eos_id], "dec": [cfg.pad_id] + ids}
        inputs = (np.asarray([rows["enc"]], np.int32), np.asarray([rows["dec"]], np.int32))
    if max(len(r) for r in rows.values()) > cfg.max_len:
        raise errors.UserError(f"--text is longer than model.max_len={cfg.max_len} tokens: shorten it")
    maps = attention_maps(model, params, cfg, inputs)
    lab = lambda r: [tok.id_to_piece(i) for i in r]
    enc, dec = lab(rows.get("enc", rows.get("self", []))), lab(rows.get("dec", rows.get("self", [])))
    labels = {"self-attention": (dec, dec), "encoder self-attention": (enc, enc),
              "decoder self-attention": (dec, dec), "cross-attention": (dec, enc)}
    write_attention_png(path, maps, labels)
    out(f"wrote {path}: " + ", ".join(f"{t} {m.shape[0]} layers x {m.shape[1]} heads" for t, m in maps.items()))
    return maps
