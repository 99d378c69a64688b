"""Tokenizers with the special tokens all three objectives need: SentencePiece (trained or loaded) and bytes.

Fixed ids: pad 0, eos 1, unk 2, bos 3. Then '[MASK]', '[CLS]', '[SEP]' and the 100 T5 sentinels
'<extra_id_0>'..'<extra_id_99>' (ids 4..106 in a tokenizer trained here; looked up by piece in a loaded one).

A tokenizer trained here round-trips text exactly (identity normalisation, whitespace kept, no dummy prefix), so
`token_bytes[ids].sum()` is the UTF-8 length of the text: that is what bits-per-byte divides by.
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


class _Specials:
    """Special-token attributes and helpers shared by both tokenizer classes (needs `_piece_id`)."""

    pad_id, eos_id, unk_id, bos_id = PAD_ID, EOS_ID, UNK_ID, BOS_ID

    def _init_specials(self) -> None:
        self.mask_id = self._piece_id(MASK)
        self.cls_id = self._piece_id(CLS)
        self.sep_id = self._piece_id(SEP)
        self.sentinel_ids = np.array([self._piece_id(s) for s in SENTINELS], np.int32)
        fixed = [PAD_ID, EOS_ID, UNK_ID, BOS_ID, self.mask_id, self.cls_id, self.sep_id]
        self.special_ids = np.array(fixed + self.sentinel_ids.tolist(), np.int32)
        is_special = np.zeros(self.vocab_size, bool)
        is_special[self.special_ids] = True
        self.is_special = is_special  # (V,) bool
        self.normal_ids = np.flatnonzero(~is_special).astype(np.int32)  # what an MLM random replacement draws

    def sentinel_id(self, i: int) -> int:
        """Id of '<extra_id_{i}>'."""
        return int(self.sentinel_ids[i])

    def _special_text(self, i: int) -> str:
        return {EOS_ID: "</s>", BOS_ID: "<s>", UNK_ID: "<unk>"}.get(i, self.id_to_piece(i))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; specials shown as text ('[MASK]', '<extra_id_3>', '</s>'), pad dropped."""
        out, run = [], []
        for i in (int(x) for x in ids):
            if i == PAD_ID:
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
        self._init_specials()
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
        self._init_specials()
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


def load(path: str) -> Tokenizer:
    """Loads a SentencePiece .model file (data.tokenizer); raises DataError if it lacks Triad's specials."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.tokenizer: {path!r} does not exist; pass a SentencePiece .model file or '' to train one")
    try:
        return Tokenizer(p.read_bytes(), str(p))
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
