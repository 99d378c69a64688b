"""Tokenizers with the special tokens all three objectives need: SentencePiece (trained or loaded), bytes, and
Hugging Face tokenizer.json files.

Fixed ids: pad 0, eos 1, unk 2, bos 3. Then '[MASK]', '[CLS]', '[SEP]' and the 100 T5 sentinels
'<extra_id_0>'..'<extra_id_99>' (ids 4..106 in a tokenizer trained here; looked up by piece in a loaded one).
A Hugging Face tokenizer keeps its own ids; its specials are found by piece (data/hf_tokenizer.py, `HF_SPECIALS`).

A tokenizer trained here round-trips text exactly (identity normalisation, whitespace kept, no dummy prefix), so
`token_bytes[ids].sum()` is the UTF-8 length of the text: that is what bits-per-byte divides by. `exact_bytes`
says whether that holds (True here and for byte-level BPE files; False for those that normalise or drop text).
"""

import hashlib
import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import sentencepiece as spm

from data.errors import DataError

PAD_ID, EOS_ID, UNK_ID, BOS_ID = 0, 1, 2, 3
NUM_SENTINELS = 100
MASK, CLS, SEP = "[MASK]", "[CLS]", "[SEP]"
SENTINELS = tuple(f"<extra_id_{i}>" for i in range(NUM_SENTINELS))
USER_SPECIALS = (MASK, CLS, SEP) + SENTINELS
MODEL_TYPES = ("unigram", "bpe")
TOKENIZER_TYPES = MODEL_TYPES + ("byte",)
TRAIN_VERSION = 1  # bump when the training options below change, so cached tokenizers are not reused

_TRAIN_MAX_LINES = 2_000_000  # Lines (evenly strided) SentencePiece trains on; enough for any vocab we use.
_TRAIN_CHUNK_CHARS = 4096  # Longer lines are cut into pieces (SentencePiece skips over-long sentences).

# A Hugging Face tokenizer's specials, by piece among the tokens it marks special; the first one present wins.
# eos ends every document in the token stream (BERT: its [SEP], the separator between its documents). Missing:
# pad and bos fall back to eos (Hugging Face pads GPT-2 with eos), the others are -1 (sentinels: none).
HF_SPECIALS = {
    "eos": ("</s>", "<|endoftext|>", "<|end_of_text|>", "[SEP]"),
    "pad": ("<pad>", "[PAD]"),
    "unk": ("<unk>", "[UNK]"),
    "bos": ("<s>", "<|begin_of_text|>", "[CLS]"),
    "mask": ("[MASK]", "<mask>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
}
# What `require` names when a special is missing: (the token, the kind of tokenizer that has it).
_NEEDS = {
    "eos": ("end-of-document token ('</s>', '<|endoftext|>', '<|end_of_text|>' or '[SEP]')", "a GPT-2 or T5 tokenizer"),
    "pad": ("padding token ('<pad>' or '[PAD]')", "a BERT or T5 tokenizer"),
    "unk": ("unknown token ('<unk>' or '[UNK]')", "a BERT or T5 tokenizer"),
    "bos": ("start token ('<s>' or '[CLS]')", "a BERT tokenizer"),
    "mask": ("[MASK] token ('[MASK]' or '<mask>')", "a BERT tokenizer"),
    "cls": ("[CLS] token ('[CLS]' or '<s>')", "a BERT tokenizer"),
    "sep": ("[SEP] token ('[SEP]' or '</s>')", "a BERT tokenizer"),
    "sentinels": ("sentinel tokens ('<extra_id_0>', '<extra_id_1>', ...)", "a T5 tokenizer"),
}
# Pre-tokenizer steps that keep every character, so a byte-level BPE stays lossless (Split/Punctuation unless
# their behavior is 'Removed'); whitespace splitters, Metaspace and the like drop or add text.
class _Specials:
    """Special-token attributes and helpers shared by the tokenizer classes (needs `_piece_id`, `_decode_run`).

    An id is -1 (and `sentinel_ids` empty) where a tokenizer lacks that special; `require` names what is missing.
    """

    pad_id, eos_id, unk_id, bos_id = PAD_ID, EOS_ID, UNK_ID, BOS_ID
    exact_bytes = True  # token_bytes[ids].sum() == UTF-8 length of the encoded text (see HFTokenizer)

    def _init_specials(self, mask: int, cls: int, sep: int, sentinels: Sequence[int], extra: Iterable[int] = ()):
        self.mask_id, self.cls_id, self.sep_id = mask, cls, sep
        self.sentinel_ids = np.array(sentinels, np.int32).reshape(-1)  # <extra_id_0> first
        ids = [self.pad_id, self.eos_id, self.unk_id, self.bos_id, mask, cls, sep, *self.sentinel_ids.tolist(), *extra]
        self.special_ids = np.array([i for i in dict.fromkeys(ids) if i >= 0], np.int32)
        is_special = np.zeros(self.vocab_size, bool)
        is_special[self.special_ids] = True
        self.is_special = is_special  # (V,) bool
        self.normal_ids = np.flatnonzero(~is_special).astype(np.int32)  # what an MLM random replacement draws

    def require(self, *names: str, purpose: str) -> None:
        """DataError unless the tokenizer has each special in `names` ('eos', 'mask', 'cls', 'sep', 'sentinels', ...);
        `purpose` says who needs it, e.g. "objective.name='mlm'"."""
        for name in names:
            if name not in _NEEDS:
                raise ValueError(f"unknown special {name!r}; choose from {list(_NEEDS)}")
            have = len(self.sentinel_ids) > 0 if name == "sentinels" else getattr(self, f"{name}_id") >= 0
            if have:
                continue
            what, fix = _NEEDS[name]
            unmarked = [p for p in HF_SPECIALS.get(name, ()) if self._in_vocab(p)]
            note = f" ({unmarked[0]!r} is in its vocabulary but not marked special)" if unmarked else ""
            raise DataError(
                f"data.tokenizer: {self.path or 'the tokenizer'} has no {what}{note}, which {purpose} needs; use "
                f"{fix} or train one (data.tokenizer='')"
            )

    def _triad_specials(self) -> tuple[int, int, int, list[int]]:
        """(mask, cls, sep, sentinels) of a tokenizer with Triad's pieces (`_piece_id` of each)."""
        return self._piece_id(MASK), self._piece_id(CLS), self._piece_id(SEP), [self._piece_id(p) for p in SENTINELS]

    def _in_vocab(self, piece: str) -> bool:
        return False

    def sentinel_id(self, i: int) -> int:
        """Id of '<extra_id_{i}>'."""
        if not 0 <= i < len(self.sentinel_ids):
            self.require("sentinels", purpose=f"<extra_id_{i}>")
            raise DataError(
                f"data.tokenizer: {self.path or 'the tokenizer'} has {len(self.sentinel_ids)} sentinels "
                f"(<extra_id_0>..<extra_id_{len(self.sentinel_ids) - 1}>), so no <extra_id_{i}>"
            )
        return int(self.sentinel_ids[i])

    def _special_text(self, i: int) -> str:
        return {EOS_ID: "</s>", BOS_ID: "<s>", UNK_ID: "<unk>"}.get(i, self.id_to_piece(i))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; specials shown as text ('[MASK]', '<extra_id_3>', '</s>'), pad dropped (unless it is eos)."""
        out, run = [], []
        drop = self.pad_id if self.pad_id != self.eos_id else None
        for i in (int(x) for x in ids):
            if i == drop:
                continue
            if 0 <= i < self.vocab_size and self.is_special[i]:
                out.append(self._decode_run(run))
                run = []
                out.append(self._special_text(i))
            else:
                run.append(i)
        out.append(self._decode_run(run))
        return "".join(out)


class Tokenizer(_Specials):
    """A SentencePiece model with the fixed special ids; `path` is its .model file and `sha256` that file's hash."""

    def __init__(self, model_proto: bytes, path: str = ""):
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.path = path
        self.sha256 = hashlib.sha256(model_proto).hexdigest()
        self.vocab_size = self.sp.vocab_size()
        self._check_specials()
        self._init_specials(*self._triad_specials())
        self.token_bytes = self._token_bytes()

    def _piece_id(self, piece: str) -> int:
        return self.sp.piece_to_id(piece)

    def _check_specials(self) -> None:
        where = f"data.tokenizer: {self.path or 'the SentencePiece model'}"
        sp = self.sp
        wrong = [
            f"{name} id {got} (needs {want})"
            for name, got, want in (
                ("pad", sp.pad_id(), PAD_ID),
                ("eos", sp.eos_id(), EOS_ID),
                ("unk", sp.unk_id(), UNK_ID),
                ("bos", sp.bos_id(), BOS_ID),
            )
            if got != want
        ]
        missing = [p for p in USER_SPECIALS if sp.piece_to_id(p) == sp.unk_id()]
        if wrong or missing:
            parts = wrong + ([f"missing pieces {missing[:5]}{'...' if len(missing) > 5 else ''}"] if missing else [])
            raise DataError(
                f"{where} lacks the special tokens Triad needs: {'; '.join(parts)}. Train it with "
                f"pad_id=0 eos_id=1 unk_id=2 bos_id=3 and user_defined_symbols=[MASK],[CLS],[SEP],"
                f"<extra_id_0>..<extra_id_99>, or set data.tokenizer='' to train one"
            )

    def _token_bytes(self) -> np.ndarray:
        out = np.zeros(self.vocab_size, np.int32)
        for i in range(self.vocab_size):
            sp = self.sp
            if self.is_special[i] or sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                continue
            out[i] = 1 if sp.is_byte(i) else len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no eos or bos added)."""
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 2) -> list[list[int]]:
        """Token ids of each text."""
        return self.sp.encode(list(texts), num_threads=num_threads)

    def id_to_piece(self, i: int) -> str:
        """The vocabulary piece of id `i`."""
        return self.sp.id_to_piece(int(i))

    def _decode_run(self, ids: list[int]) -> str:
        return self.sp.decode(ids) if ids else ""


class ByteTokenizer(_Specials):
    """UTF-8 bytes as tokens: the specials (ids 0..106), then byte b at id 107 + b. No training."""

    OFFSET = 4 + len(USER_SPECIALS)

    def __init__(self):
        self.path = ""
        self.sha256 = "byte-tokenizer-v1"
        self.vocab_size = self.OFFSET + 256
        self._pieces = ["<pad>", "</s>", "<unk>", "<s>", *USER_SPECIALS] + [f"<0x{b:02X}>" for b in range(256)]
        self._init_specials(*self._triad_specials())
        self.token_bytes = np.zeros(self.vocab_size, np.int32)
        self.token_bytes[self.OFFSET :] = 1

    def _piece_id(self, piece: str) -> int:
        return self._pieces.index(piece)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (its UTF-8 bytes shifted past the specials)."""
        return (np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self.OFFSET).tolist()

    def encode_batch(self, texts: Sequence[str], num_threads: int = 2) -> list[list[int]]:
        """Token ids of each text."""
        return [self.encode(t) for t in texts]

    def id_to_piece(self, i: int) -> str:
        """The piece of id `i` ('<0x41>' for byte 0x41)."""
        return self._pieces[int(i)]

    def _decode_run(self, ids: list[int]) -> str:
        return bytes(i - self.OFFSET for i in ids).decode("utf-8", errors="replace")


def load(path: str):
    """Loads data.tokenizer: a Hugging Face tokenizer.json (by its .json suffix) or a SentencePiece .model file with
    Triad's specials; raises DataError if it is missing, unreadable, or (SentencePiece) lacks those specials."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(
            f"data.tokenizer: {path!r} does not exist; pass a SentencePiece .model file, a Hugging Face "
            f"tokenizer.json, or '' to train one"
        )
    try:
        content = p.read_bytes()
    except OSError as e:
        raise DataError(f"data.tokenizer: cannot read {path!r} ({e})") from None
    if p.suffix.lower() == ".json":
        from data.hf_tokenizer import HFTokenizer  # data/hf_tokenizer.py builds on this module's _Specials

        return HFTokenizer(content, str(p))
    try:
        return Tokenizer(content, str(p))
    except RuntimeError as e:
        raise DataError(f"data.tokenizer: {path!r} is not a SentencePiece model ({e}); pass a .model file") from None


def _training_lines(texts: Iterable[str]) -> list[str]:
    lines = [
        line[i : i + _TRAIN_CHUNK_CHARS]
        for text in texts
        for line in text.split("\n")
        if line.strip()
        for i in range(0, len(line), _TRAIN_CHUNK_CHARS)
    ]
    if len(lines) > _TRAIN_MAX_LINES:
        lines = lines[:: -(-len(lines) // _TRAIN_MAX_LINES)]
    return lines


def train(texts: Sequence[str], vocab_size: int, model_type: str, prefix: str) -> Tokenizer:
    """Trains SentencePiece on `texts` and writes `prefix + '.model'` atomically; deterministic for given inputs."""
    if model_type not in MODEL_TYPES:
        raise DataError(f"data.tokenizer_type: unknown {model_type!r}; choose one of {list(TOKENIZER_TYPES)}")
    minimum = 4 + len(USER_SPECIALS) + 256 + 1
    if vocab_size < minimum:
        raise DataError(
            f"data.vocab_size={vocab_size} is too small: the specials and 256 byte pieces alone take {minimum - 1}; "
            f"use at least {minimum} (8000 is a good start)"
        )
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(_training_lines(texts)),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            user_defined_symbols=list(USER_SPECIALS),
            byte_fallback=True,
            character_coverage=1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            split_digits=True,
            max_sentence_length=4 * _TRAIN_CHUNK_CHARS,
            num_threads=1,  # fixed (the result depends on it); one thread is also fastest on a busy 2-core machine
            minloglevel=2,
        )
    except RuntimeError as e:
        msg = str(e)
        if "too high" in msg and "<=" in msg:
            limit = msg.rsplit("<=", 1)[1].strip(" .")
            raise DataError(
                f"data.vocab_size={vocab_size} is too large for this training text (at most {limit} for "
                f"tokenizer_type {model_type!r}); lower data.vocab_size or add text to data.train_files"
            ) from None
        if "smaller than required_chars" in msg:
            need = msg.rsplit(" vs ", 1)[-1].split(".")[0].strip()
            raise DataError(
                f"data.vocab_size={vocab_size} is too small: the {minimum - 1} special and byte pieces plus every "
                f"distinct character of the training text need {need}; use data.vocab_size >= {need}"
            ) from None
        raise DataError(f"data.train_files: SentencePiece training failed: {msg}") from None
    proto = model.getvalue()
    path = Path(prefix + ".model")
    _atomic_write(path, proto)
    return Tokenizer(proto, str(path))


def train_cached(texts: Sequence[str], vocab_size: int, model_type: str, cache_dir: Path) -> tuple[Tokenizer, bool]:
    """`train`, cached under cache_dir/tokenizers keyed by the training text and settings; returns (tok, hit)."""
    h = hashlib.sha256(f"v{TRAIN_VERSION} {spm.__version__} {model_type} {vocab_size}\n".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    prefix = cache_dir / "tokenizers" / f"{model_type}-{vocab_size}-{h.hexdigest()[:24]}"
    path = Path(str(prefix) + ".model")
    if path.is_file():
        return Tokenizer(path.read_bytes(), str(path)), True
    return train(texts, vocab_size, model_type, str(prefix)), False


def _atomic_write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
