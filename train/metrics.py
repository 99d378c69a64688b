"""What a run writes about itself: metrics.jsonl, TensorBoard events, a progress bar or log lines."""

import json
import logging as logging_std
import math
import os
import sys

from absl import logging


class _DropLibraryInfo(logging_std.Filter):
    """Drops INFO lines of libraries that narrate every save (orbax); their warnings and errors still show."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        return record.levelno > logging_std.INFO or f"{os.sep}orbax{os.sep}" not in record.pathname


def quiet_libraries() -> None:
    """Keeps the log readable: our INFO lines, library warnings and errors."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
        handler.addFilter(_DropLibraryInfo())


class NonFiniteError(RuntimeError):
    """A loss or gradient norm became NaN or infinite."""


class Writer:
    """Appends one JSON object per logged step to metrics.jsonl and the same scalars to TensorBoard (tb/).

    Only process 0 writes; the other processes get a writer that does nothing.
    """

    def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0, total_steps: int = 0,
                 progress_bar: bool = True, shown: tuple[str, ...] = ("loss", "accuracy", "bits_per_byte")):
        self.enabled = enabled
        # What the progress line shows: the objective's metrics (train/objectives.py), as train/ and eval/ values.
        self.shown = {f"{p}/{k}" for k in shown for p in ("train", "eval")} | {"perf/tokens_per_sec"}
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.total = total_steps
        self.bar = progress_bar and enabled and sys.stderr.isatty()
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._drop_rows_after(resume_step)
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tb"), flush_secs=30)
        except ImportError:  # pragma: no cover - tensorboardX is a dependency; keep running without it
            logging.warning("tensorboardX is not installed: no TensorBoard events are written")

    def _drop_rows_after(self, step: int) -> None:
        """A resumed run re-creates the rows after its checkpoint; keep the file free of duplicates."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            rows = [line for line in f if line.strip()]
        kept = [r for r in rows if json.loads(r).get("step", 0) <= step]
        if len(kept) != len(rows):
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.path)
            logging.info("metrics.jsonl: dropped %d rows after step %d (the resumed run writes them again)",
                         len(rows) - len(kept), step)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        self._show(step, scalars)

    def _show(self, step: int, s: dict[str, float]) -> None:
        parts = [f"{k.split('/', 1)[-1] if k.startswith('train/') else k}={_fmt(v)}" for k, v in s.items()
                 if k in self.shown]
        if self.bar and self.total:
            frac = min(step / self.total, 1.0)
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
            end = "\n" if "eval/loss" in s or step >= self.total else ""
            sys.stderr.write(f"\r[{bar}] {step}/{self.total} " + " ".join(parts) + "\033[K" + end)
            sys.stderr.flush()
        else:
            logging.info("step %d: %s", step, " ".join(parts))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"


def check_finite(step: int, scalars: dict[str, float], last_checkpoint: int | None) -> None:
    """Raises NonFiniteError naming the step, the metric and the last good checkpoint."""
    for k in ("train/loss", "opt/grad_norm"):
        v = scalars.get(k)
        if v is not None and not math.isfinite(v):
            where = f"step {last_checkpoint}" if last_checkpoint is not None else "none yet"
            raise NonFiniteError(f"{k} is {v} at step {step}; last good checkpoint: {where}. Lower "
                                 "train.learning_rate, raise train.warmup_steps or set train.nonfinite='skip'")
