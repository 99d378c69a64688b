"""Meshes, shardings and the two ways to run the step: `jax.jit` over a mesh (default) or `jax.pmap`.

Both runners expose the same methods, so the loop does not know which one it drives:
  init(rng) -> state            state created directly sharded (jit) or replicated (pmap)
  abstract_state() -> state     ShapeDtypeStructs with shardings, for checkpoint restore
  place(state) -> state         a restored state laid out as the step takes it
  host_state(state) -> state    one copy of the state (what a checkpoint holds)
  train(state, batch) -> (state, metrics)   batch: this process's numpy slice of the global batch
  evaluate(state, batch) -> sums
"""

import functools
import math
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from model import sharding as model_sharding
from train import errors
from train import step as step_lib

MESH_AXES = model_sharding.MESH_AXES
BATCH_AXES = ("data", "fsdp")  # The batch dimension is split over these mesh axes.


class ParallelError(errors.UserError):
    """A mesh, batch or process setting that cannot work; the message names the flag and the fix."""


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """Starts jax.distributed from flags, from TRIAD_* / JAX_* environment variables, or by cluster detection.

    With no flag and no variable set, and no cluster detected, this is a single-process run and does nothing.
    """
    coordinator_address = coordinator_address or os.environ.get("TRIAD_COORDINATOR_ADDRESS", "")
    num_processes = num_processes or int(os.environ.get("TRIAD_NUM_PROCESSES", "0"))
    if process_id < 0:
        process_id = int(os.environ.get("TRIAD_PROCESS_ID", "-1"))
    if coordinator_address or num_processes > 1:
        if not (coordinator_address and num_processes > 0 and process_id >= 0):
            raise ParallelError(
                "multi-host runs need --coordinator_address, --num_processes and --process_id together "
                "(or TRIAD_COORDINATOR_ADDRESS, TRIAD_NUM_PROCESSES, TRIAD_PROCESS_ID)"
            )
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif any(k in os.environ for k in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")):
        jax.distributed.initialize()  # JAX's own cluster detection (SLURM, Open MPI, Cloud TPU).


def enable_compile_cache(path: str | None = None) -> str:
    """Turns on JAX's persistent compilation cache ($TRIAD_COMPILE_CACHE, default $TRIAD_CACHE/xla or
    ~/.cache/triad/xla; 'off' disables it): a second run of a config compiles in about a second."""
    if path is None:
        default = os.path.join(os.environ.get("TRIAD_CACHE") or "~/.cache/triad", "xla")
        path = os.environ.get("TRIAD_COMPILE_CACHE", default)
    if not path or path.lower() == "off":
        return ""
    path = os.path.expanduser(path)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def mesh_shape(mesh_cfg: ml_collections.ConfigDict, n_devices: int) -> dict[str, int]:
    """Resolves the -1 entry of config.mesh and checks the product equals the device count."""
    sizes = {a: int(mesh_cfg[a]) for a in MESH_AXES}
    bad = [a for a, s in sizes.items() if s == 0 or s < -1]
    if bad:
        raise ParallelError(f"mesh.{bad[0]}={sizes[bad[0]]} is invalid: use a positive size or -1")
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ParallelError(f"mesh.{free[0]} and mesh.{free[1]} are both -1: at most one axis can take the rest")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if n_devices % fixed:
            raise ParallelError(
                f"the fixed mesh axes multiply to {fixed}, which does not divide the {n_devices} devices: "
                f"change mesh.{', mesh.'.join(a for a in MESH_AXES if a not in free)}"
            )
        sizes[free[0]] = n_devices // fixed
    if math.prod(sizes.values()) != n_devices:
        desc = " x ".join(f"mesh.{a}={s}" for a, s in sizes.items())
        raise ParallelError(f"{desc} = {math.prod(sizes.values())} devices, but there are {n_devices}: "
                            "make the product equal the device count (or set one axis to -1)")
    return sizes


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
    """A mesh with axes (data, fsdp, tensor); Auto axis types so that flax.linen's logical sharding works."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_shape(mesh_cfg, len(devices))
    return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES), devices=devices)


def _path_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def opt_state_shardings(abstract_opt_state, abstract_params, param_shardings, replicated):
    """Optimizer-state shardings: a leaf shaped like a parameter whose path ends with that parameter's path
    (Adam's mu and nu) is sharded like it; anything else (counts, Adafactor's factored rows) is replicated."""
    by_path = {}
    flat_params = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    flat_sh = jax.tree.leaves(param_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    for (path, leaf), sh in zip(flat_params, flat_sh, strict=True):
        by_path[_path_names(path)] = (leaf.shape, sh)
    depths = sorted({len(p) for p in by_path}, reverse=True)

    def pick(path, leaf):
        names = _path_names(path)
        for d in depths:
            hit = by_path.get(names[-d:])
            if hit is not None and hit[0] == leaf.shape:
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def example_inputs(model, objective) -> dict:
    """One zero example of every input the model takes, shaped as the objective's batches (for init)."""
    return {k: np.zeros((1, *shape), dtype) for k, (shape, dtype) in objective.layout.items()
            if k in model.input_names}


class JitRunner:
    """The step compiled once with `jax.jit` over a (data, fsdp, tensor) mesh, state donated."""

    def __init__(self, model, objective, tx, lr_schedule, config: ml_collections.ConfigDict, devices=None):
        self.model, self.objective, self.tx, self.config = model, objective, tx, config
        self.mesh = make_mesh(config.mesh, devices)
        self.rules = model_sharding.rules()
        batch_shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        mb = config.train.batch_size // config.train.microbatches
        if config.train.batch_size % config.train.microbatches:
            raise ParallelError(f"train.batch_size={config.train.batch_size} is not divisible by "
                                f"train.microbatches={config.train.microbatches}")
        if mb % batch_shards:
            raise ParallelError(
                f"train.batch_size={config.train.batch_size} (microbatch of {mb}) is not divisible by the "
                f"{batch_shards} batch shards (mesh.data x mesh.fsdp): use a multiple of {batch_shards}"
            )
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P(BATCH_AXES))
        self._example = example_inputs(model, objective)
        self._param_shardings = None
        self._state_shardings = None
        self._train = _Compiled("train_step", jax.jit(
            functools.partial(self._traced, step_lib.train_step, model=model, objective=objective, tx=tx,
                              lr_schedule=lr_schedule, config=config),
            donate_argnums=0,
        ))
        self._eval = _Compiled("eval_step", jax.jit(
            lambda params, batch: self._traced(step_lib.eval_step, params, batch, model=model, objective=objective)))

    def _traced(self, fn, *args, **kwargs):
        with nn.logical_axis_rules(self.rules):
            return fn(*args, **kwargs)

    def _init_params(self, rng):
        with nn.logical_axis_rules(self.rules):
            variables = self.model.init({"params": rng, "dropout": rng}, **self._example, train=False)
        return variables["params"]

    def _shardings(self):
        if self._state_shardings is None:
            with jax.set_mesh(self.mesh):
                boxed = jax.eval_shape(self._init_params, jax.random.key(0))
            logical = nn.get_partition_spec(boxed)
            self._param_shardings = nn.logical_to_mesh_sharding(logical, self.mesh, self.rules)
            abstract_params = nn.meta.unbox(boxed)
            abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
            opt_sh = opt_state_shardings(abstract_opt, abstract_params, self._param_shardings, self.replicated)
            self._state_shardings = step_lib.TrainState(step=self.replicated, params=self._param_shardings,
                                                        opt_state=opt_sh)
            self._abstract = step_lib.TrainState(
                step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params, opt_state=abstract_opt)
        return self._state_shardings

    def abstract_state(self) -> step_lib.TrainState:
        """The state's shapes, dtypes and shardings, without allocating it."""
        sh = self._shardings()
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), self._abstract, sh)

    def init(self, rng) -> step_lib.TrainState:
        """Initial state, created directly in its sharded layout (never whole on one device)."""
        sh = self._shardings()

        def init_state(rng):
            params = nn.meta.unbox(self._init_params(rng))
            return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

        with jax.set_mesh(self.mesh):
            return jax.jit(init_state, out_shardings=sh)(rng)

    def shard_params(self, params):
        """Places a host or device parameter tree in the state's parameter layout."""
        self._shardings()
        return jax.device_put(params, self._param_shardings)

    def device_batch(self, batch: dict) -> dict:
        """This process's rows -> one global array per key, split over (data, fsdp)."""
        n = jax.process_count()
        return {k: jax.make_array_from_process_local_data(
                    self.batch_sharding, v, (v.shape[0] * n,) + v.shape[1:]) for k, v in batch.items()}

    def train(self, state, batch: dict):
        with jax.set_mesh(self.mesh):
            return self._train(state, self.device_batch(batch))

    def evaluate(self, state, batch: dict):
        with jax.set_mesh(self.mesh):
            return self._eval(state.params, self.device_batch(batch))

    @property
    def compile_seconds(self) -> float:
        return self._train.compile_seconds

    def compiled_train(self):
        """The compiled train step (for cost and memory analysis)."""
        return self._train.compiled

    def place(self, state):
        return state  # restored with the shardings of abstract_state()

    def host_state(self, state):
        return state


class PmapRunner:
    """The same step body under `jax.pmap` with gradients summed over the device axis; state replicated."""

    AXIS = "devices"

    def __init__(self, model, objective, tx, lr_schedule, config: ml_collections.ConfigDict, devices=None):
        self.model, self.objective, self.tx, self.config = model, objective, tx, config
        self.devices = list(devices if devices is not None else jax.local_devices())
        self.n = len(self.devices)
        if jax.process_count() > 1:
            raise ParallelError("parallel='pmap' is single-host here: use parallel='jit' for multi-host runs")
        if config.train.batch_size % (self.n * config.train.microbatches):
            raise ParallelError(
                f"train.batch_size={config.train.batch_size} is not divisible by {self.n} devices x "
                f"train.microbatches={config.train.microbatches} (parallel='pmap')")
        self._example = example_inputs(model, objective)
        self._train = _Compiled("train_step", aot=False, fn=jax.pmap(
            functools.partial(step_lib.train_step, model=model, objective=objective, tx=tx, lr_schedule=lr_schedule,
                              config=config, axis_name=self.AXIS),
            axis_name=self.AXIS, devices=self.devices, donate_argnums=0))
        self._eval = _Compiled("eval_step", aot=False, fn=jax.pmap(
            functools.partial(step_lib.eval_step, model=model, objective=objective, axis_name=self.AXIS),
            axis_name=self.AXIS, devices=self.devices))

    def _init_unreplicated(self, rng):
        params = nn.meta.unbox(self.model.init({"params": rng, "dropout": rng}, **self._example,
                                               train=False)["params"])
        return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

    def abstract_state(self):
        return jax.eval_shape(self._init_unreplicated, jax.random.key(0))

    def replicate(self, tree):
        """One copy per device, placed as pmap's outputs are (so the step does not compile again for step 2)."""
        sharding = NamedSharding(jax.sharding.Mesh(np.array(self.devices), (self.AXIS,)), P(self.AXIS))
        return jax.tree.map(
            lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (self.n,) + np.shape(x)), sharding), tree)

    def init(self, rng):
        return self.replicate(jax.jit(self._init_unreplicated)(rng))

    def shard_params(self, params):
        return self.replicate(params)

    def place(self, state):
        return self.replicate(state)

    def _split(self, batch: dict) -> dict:
        return {k: v.reshape((self.n, v.shape[0] // self.n) + v.shape[1:]) for k, v in batch.items()}

    def train(self, state, batch: dict):
        state, metrics = self._train(state, self._split(batch))
        return state, jax.tree.map(lambda x: x[0], metrics)

    def evaluate(self, state, batch: dict):
        return jax.tree.map(lambda x: x[0], self._eval(state.params, self._split(batch)))

    @property
    def compile_seconds(self) -> float:
        return self._train.compile_seconds

    def compiled_train(self):
        return None

    def host_state(self, state):
        return jax.tree.map(lambda x: x[0], state)


class _Compiled:
    """Calls a jitted function, compiling ahead of time, and logs an error naming what changed if it ever has
    to compile again (a second compile in a run is a bug: a shape or dtype that should be fixed was not)."""

    def __init__(self, name: str, fn, aot: bool = True):
        self.name, self.fn, self.aot = name, fn, aot
        self.signature = self.abstract = None
        self.compiled = None
        self.compile_seconds = 0.0
        self.compiles = 0

    def __call__(self, *args):
        # Checked on every step, so cheap: the tree structure and each leaf's (shape, dtype), no path strings.
        leaves, treedef = jax.tree_util.tree_flatten(args)
        sig = (treedef, tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in leaves))
        if sig != self.signature:
            if self.signature is not None:
                logging.error("%s is compiling a second time; changed: %s", self.name, _changes(self.abstract, args))
            t0 = time.perf_counter()
            self.compiled = self.fn.lower(*args).compile() if self.aot else self.fn
            self.compile_seconds += time.perf_counter() - t0
            self.compiles += 1
            self.signature = sig
            self.abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), args)
        return self.compiled(*args)


def _changes(before, after) -> str:
    """What differs between two argument trees: '<path>: (shape, dtype) -> (shape, dtype)', at most five."""
    def described(args):
        return [(jax.tree_util.keystr(p), tuple(np.shape(x)), str(x.dtype))
                for p, x in jax.tree_util.tree_flatten_with_path(args)[0]]
    changes = [f"{a[0]}: {a[1:]} -> {b[1:]}" for a, b in zip(described(before), described(after), strict=False)
               if a != b]
    return "; ".join(changes[:5]) or "the argument structure"
