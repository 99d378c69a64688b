"""Orbax checkpoints: save every N steps and at the end, keep the last K, resume from the newest readable one.

A checkpoint is the TrainState (step, params, optimizer state) plus a small JSON record. Because batches are a
function of the step, the step number is all the data position a resumed run needs.
"""

import contextlib
import gc
import logging as pylogging
import os
import sys
import warnings

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from train import errors


class CheckpointError(errors.UserError):
    """A checkpoint path that cannot be used; the message names the flag or file."""


class Checkpoints:
    """The checkpoints of one workdir (under `<workdir>/checkpoints`)."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self.unreadable = set()  # steps restore_latest could not read: `save` at such a step replaces it

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, meta: dict) -> None:
        """Starts writing `state` at `step` (asynchronously; `close` waits until it is on disk)."""
        if step in self.unreadable:  # the run came back past a corrupt checkpoint: a good one takes its place
            self.manager.delete(step)
            self.unreadable.discard(step)
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)), force=True)

    def restore_latest(self, abstract_state):
        """(state, meta) from the newest checkpoint that reads back, or None if there is none.

        A checkpoint that fails to read (partially written or corrupted files) is skipped with one warning line in
        favour of the one before it.
        """
        for step in reversed(self.steps()):
            try:
                with _quiet_if_it_fails(os.path.join(self.directory, str(step))):
                    restored = self.manager.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 - any failure to read means "use the previous one"
                while e.__cause__ is not None:  # orbax wraps the reader's error, which says what is wrong
                    e = e.__cause__
                logging.warning("checkpoint %s/%d is unreadable (%s: %s); trying the previous one",
                                self.directory, step, type(e).__name__, (str(e).strip().splitlines() or [""])[0][:300])
                self.unreadable.add(step)
                continue
            return restored["state"], dict(restored["meta"] or {})
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class _AbandonedReads(pylogging.Filter):
    """What the reads that a failed restore abandoned print when they end, in the background or at exit: asyncio's
    "exception was never retrieved" log lines, "Exception ignored in <coroutine>" and "Event loop is closed" (their
    callbacks into orbax's closed event loop) via sys.unraisablehook, "coroutine ... was never awaited" warnings.
    `install`, called after the first failed restore, drops exactly those for the rest of the process."""

    paths: set[str] = set()  # the step directories (with a trailing separator) that failed to read

    @classmethod
    def install(cls, step_dir: str) -> None:
        cls.paths.add(os.path.join(step_dir, ""))
        if not getattr(sys.unraisablehook, "drops_abandoned_reads", False):
            previous = sys.unraisablehook

            def hook(unraisable):
                if not cls.noise(unraisable.exc_value, unraisable.object):
                    previous(unraisable)

            hook.drops_abandoned_reads = True
            sys.unraisablehook = hook
        asyncio_log = pylogging.getLogger("asyncio")
        if not any(isinstance(f, cls) for f in asyncio_log.filters):
            asyncio_log.addFilter(cls())
        warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning)

    @classmethod
    def noise(cls, exc, obj=None) -> bool:
        code = getattr(obj, "cr_code", None)
        return bool(code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
                    or isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
                    or exc is not None and any(p in str(exc) for p in cls.paths))

    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (self.noise(exc) or any(p in record.getMessage() for p in self.paths))


class _Held(pylogging.Filter):
    """Holds back the log records of asyncio and orbax (orbax logs through absl)."""

    def __init__(self):
        super().__init__()
        self.records = []

    def filter(self, record) -> bool:
        if record.name.startswith(("asyncio", "orbax")) or f"{os.sep}orbax{os.sep}" in record.pathname:
            if not any(r is record for r in self.records):  # a record reaches each handler's copy of the filter
                self.records.append(record)
            return False
        return True


@contextlib.contextmanager
def _quiet_if_it_fails(step_dir: str):
    """Reading the checkpoint in `step_dir`: if that fails, what orbax and asyncio print besides the exception (log
    lines, tracebacks of the abandoned reads) is dropped, now and later (`_AbandonedReads`); if it succeeds, the
    log lines held back are let through."""
    held, unraisable = _Held(), []
    handlers = list(pylogging.getLogger().handlers)
    loggers = [pylogging.getLogger(n) for n in ("absl", "asyncio", "orbax")]
    for x in handlers + loggers:
        x.addFilter(held)
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if failed:
            gc.collect()  # abandoned tasks and coroutines report when they are collected: let them do it here
        sys.unraisablehook = hook
        for x in handlers + loggers:
            x.removeFilter(held)
        if failed:
            _AbandonedReads.install(step_dir)
        else:
            for record in held.records:
                pylogging.getLogger(record.name).handle(record)
        for u in unraisable:
            sys.unraisablehook(u)


def resolve(path: str) -> tuple[str, int]:
    """A workdir, its checkpoints/ folder or one step folder -> (checkpoints directory, step)."""
    p = epath.Path(os.path.abspath(path))
    if not p.exists():
        raise CheckpointError(f"init_from: {path!r} does not exist; pass a workdir, its checkpoints/ folder "
                              "or a checkpoint step folder")
    if (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    if p.name.isdigit() and (p / "state").exists():
        return str(p.parent), int(p.name)
    steps = sorted(int(c.name) for c in p.iterdir() if c.name.isdigit() and (c / "state").exists())
    if not steps:
        raise CheckpointError(f"init_from: no checkpoint found under {str(p)!r}")
    return str(p), steps[-1]


def load_params(path: str, abstract_params):
    """Only the parameters of the checkpoint at `path` (see `resolve`), placed as `abstract_params` says."""
    directory, step = resolve(path)
    handler = ocp.PyTreeCheckpointer()
    target = {"params": abstract_params}
    restore_args = jax.tree.map(
        lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype)
        if getattr(a, "sharding", None) is not None else ocp.RestoreArgs(), target)
    try:
        restored = handler.restore(os.path.join(directory, str(step), "state"), args=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True))
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"init_from: the parameters in {directory}/{step} do not fit this model's config "
                              f"({str(e).splitlines()[0][:300]}); use the same model.* settings") from None
    return restored["params"]


def save_params(workdir: str, params, meta: dict | None = None, step: int = 0) -> str:
    """Writes a parameters-only checkpoint (`{'params': ...}`) under `<workdir>/checkpoints/<step>`, readable by
    `load_params` (so by --config.init_from and train.sample). Returns the checkpoint directory."""
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), keep=1, async_save=False)
    checkpoints.save(step, {"params": params}, dict(meta or {}, step=step))
    checkpoints.close()
    return os.path.join(checkpoints.directory, str(step))
