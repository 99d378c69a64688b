"""Orbax checkpoints: save every N steps and at the end, keep the last K, resume from the newest readable one.

A checkpoint is the TrainState (step, params, optimizer state) plus a small JSON record. Because batches are a
function of the step, the step number is all the data position a resumed run needs.
"""

import os

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

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, meta: dict) -> None:
        """Starts writing `state` at `step` (asynchronously; `wait` blocks until it is on disk)."""
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)), force=True)

    def restore_latest(self, abstract_state):
        """(state, meta) from the newest checkpoint that reads back, or None if there is none.

        A checkpoint that fails to read (partially written or corrupted files) is skipped with a warning in favour
        of the one before it.
        """
        for step in reversed(self.steps()):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 - any failure to read means "use the previous one"
                logging.warning("checkpoint %s/%d is unreadable (%s: %s); trying the previous one",
                                self.directory, step, type(e).__name__, str(e).splitlines()[0][:200])
                continue
            return restored["state"], dict(restored["meta"] or {})
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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
