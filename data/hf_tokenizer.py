"""Hugging Face tokenizer.json files through the `tokenizers` library, with the specials Triad's objectives need
found by piece (data/tokenizer.py's HF_SPECIALS) and token bytes exact where the tokenizer is lossless."""

import functools
import hashlib
import json
import re
from collections.abc import Sequence

import numpy as np
import tokenizers

from data.errors import DataError
from data.tokenizer import HF_SPECIALS, _Specials

_LOSSLESS_PRE_TOKENIZERS = ("ByteLevel", "Split", "Digits", "Punctuation")
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # a byte-fallback piece: one byte
_PROBE = "  Héllo, wörld!\tTabs  and  spaces\n日本語 ☃ — 🙂 café [x] 12345 "  # checks a lossless tokenizer


class HFTokenizer(_Specials):
    """A Hugging Face tokenizer.json (`tokenizers` library) with its own ids; `sha256` is the hash of the file.

    Specials are found by piece among the tokens the file marks special (HF_SPECIALS, first match wins); a missing
    one is -1 (sentinel_ids empty) and `require` raises a DataError naming it, so only an objective that needs it
    fails. is_special also covers every other token the file marks special. Text is encoded without the special
    tokens its post-processor would add, and a special token's text inside a document is read as that token.

    token_bytes is exact (`exact_bytes` True: token_bytes[encode(t)].sum() == len(t.encode('utf-8')) for every t
    that contains no special token's text) only for lossless byte-level BPE (GPT-2 style: ByteLevel pre-tokenizer
    without a prefix space, no normaliser, all 256 byte symbols in the vocabulary), where each piece's bytes come
    from the byte-level alphabet. Where the tokenizer normalises or drops text (BERT's WordPiece lowercases and
    drops whitespace; T5's Unigram adds a '▁' dummy prefix), no per-id count can be exact: token_bytes is an
    estimate ('▁' as a space, '##' continuations without one, word-initial WordPiece pieces with one, byte pieces
    as one byte), exact_bytes is False, and bits per byte computed from it is only an approximation.
    """

    def __init__(self, content: bytes, path: str = ""):
        self.path = path
        self.sha256 = hashlib.sha256(content).hexdigest()
        where = f"data.tokenizer: {path or 'the tokenizer.json'!r}"
        try:
            cfg = json.loads(content)
            self.hf = tokenizers.Tokenizer.from_str(content.decode("utf-8"))
        except Exception as e:  # json, UTF-8 and the library's own (untyped) parse errors
            why = (str(e).splitlines() or [type(e).__name__])[0]
            raise DataError(
                f"{where} is not a Hugging Face tokenizer.json ({why}); pass a tokenizer.json saved by the "
                f"tokenizers or transformers library, or '' to train one"
            ) from None
        vocab = self.hf.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values(), default=-1) + 1
        self._pieces = [""] * self.vocab_size  # ids with no token (holes) stay "" and count as special
        for piece, i in vocab.items():
            self._pieces[i] = piece
        added = self.hf.get_added_tokens_decoder()
        marked = {t.content: i for i, t in added.items() if t.special}
        self._vocab = vocab

        def find(name: str, default: int = -1) -> int:
            return next((marked[p] for p in HF_SPECIALS[name] if p in marked), default)

        self.eos_id = find("eos")
        self.pad_id, self.unk_id, self.bos_id = find("pad", self.eos_id), find("unk"), find("bos", self.eos_id)
        sentinels = []
        while f"<extra_id_{len(sentinels)}>" in marked:
            sentinels.append(marked[f"<extra_id_{len(sentinels)}>"])
        holes = [i for i, p in enumerate(self._pieces) if not p]
        self._init_specials(find("mask"), find("cls"), find("sep"), sentinels, [*marked.values(), *holes])
        plain = {i for i, t in added.items() if not t.special}
        byte_level = _has_step(cfg.get("decoder"), "ByteLevel") or _has_step(cfg.get("pre_tokenizer"), "ByteLevel")
        self.token_bytes = _hf_token_bytes(self._pieces, self.is_special, plain, cfg.get("model") or {}, byte_level)
        self.exact_bytes = _lossless_byte_level(cfg, vocab) and self._round_trips(_PROBE)

    def _in_vocab(self, piece: str) -> bool:
        return piece in self._vocab

    def _round_trips(self, text: str) -> bool:
        ids = self.encode(text)
        return int(self.token_bytes[ids].sum()) == len(text.encode("utf-8")) and self.decode(ids) == text

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens added)."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = 2) -> list[list[int]]:
        """Token ids of each text, by the library's parallel batch encoder (its thread count is the process's
        $RAYON_NUM_THREADS, not num_threads); num_threads=1 (e.g. one of many worker processes) encodes in turn."""
        if num_threads == 1:
            return [self.encode(t) for t in texts]
        batch = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)
        return [e.ids for e in batch(list(texts), add_special_tokens=False)]

    def id_to_piece(self, i: int) -> str:
        """The vocabulary piece of id `i` ('' for an id the file does not use)."""
        return self._pieces[int(i)]

    def _special_text(self, i: int) -> str:
        return self._pieces[i]

    def _decode_run(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False) if ids else ""


def _steps(node) -> list[dict]:
    """The steps of a tokenizer.json normalizer/pre_tokenizer/decoder entry (a Sequence flattened)."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [
            s
            for child in node.get("pretokenizers") or node.get("decoders") or node.get("normalizers") or []
            for s in _steps(child)
        ]
    return [node]


def _has_step(node, kind: str) -> bool:
    return any(s.get("type") == kind for s in _steps(node))


def _lossless_byte_level(cfg: dict, vocab: dict[str, int]) -> bool:
    """True for a byte-level BPE that keeps every byte of the text: each piece then spells its bytes exactly."""
    pre = _steps(cfg.get("pre_tokenizer"))
    return (
        (cfg.get("model") or {}).get("type") == "BPE"
        and not _steps(cfg.get("normalizer"))
        and any(s.get("type") == "ByteLevel" for s in pre)
        and all(s.get("type") in _LOSSLESS_PRE_TOKENIZERS and s.get("behavior") != "Removed" for s in pre)
        and not any(s.get("type") == "ByteLevel" and s.get("add_prefix_space") for s in pre)
        and _has_step(cfg.get("decoder"), "ByteLevel")
        and all(c in vocab for c in _byte_alphabet())
    )


@functools.cache
def _byte_alphabet() -> dict[str, int]:
    """GPT-2's bytes_to_unicode table inverted: the printable character that stands for each byte -> the byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _hf_token_bytes(
    pieces: list[str], is_special: np.ndarray, plain_added: set[int], model: dict, byte_level: bool
) -> np.ndarray:
    """(V,) int32: the UTF-8 bytes of text each id stands for (exact for byte-level pieces; see HFTokenizer)."""
    alphabet = _byte_alphabet()
    prefix = model.get("continuing_subword_prefix") or ""
    suffix = model.get("end_of_word_suffix") or ""
    wordpiece = model.get("type") == "WordPiece"
    out = np.zeros(len(pieces), np.int32)
    for i, p in enumerate(pieces):
        if is_special[i]:
            continue
        if i in plain_added:  # an added token is matched as raw text
            n = len(p.encode("utf-8"))
        elif byte_level:
            n = sum(1 if c in alphabet else len(c.encode("utf-8")) for c in p)
        elif _BYTE_PIECE.fullmatch(p):
            n = 1
        elif wordpiece and prefix and p.startswith(prefix):  # '##' continues a word
            n = len(p[len(prefix) :].encode("utf-8"))
        elif wordpiece:  # a word start usually follows a space, which WordPiece drops; punctuation usually does not
            n = len(p.encode("utf-8")) + p[0].isalnum()
        else:
            if prefix and p.startswith(prefix):
                p = p[len(prefix) :]
            if suffix and p.endswith(suffix):
                p = p[: -len(suffix)] + " "
            n = len(p.replace("\u2581", " ").encode("utf-8"))
        out[i] = n
    return out
