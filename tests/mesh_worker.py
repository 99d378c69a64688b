"""Runs in a subprocess with 8 fake CPU devices: trains one tiny model for N steps on several meshes (and under
pmap) and prints the train losses and a few parameter shardings as JSON, for tests/test_parallel.py.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.mesh_worker ARCH DIR STEPS SETTING...
SETTING is `one` (a 1-device mesh), `pmap`, or mesh sizes like `data=2,fsdp=2,tensor=2`. ARCH `bert+nsp` is bert
with objective.nsp.
"""

import json
import sys

import jax
import numpy as np

from tests import helpers
from train import loop


def run(arch: str, directory: str, steps: int, setting: str) -> dict:
    arch, _, extra = arch.partition("+")
    config = helpers.tiny_config(arch, directory, **{"train.steps": steps, "objective.nsp": extra == "nsp"})
    devices = None
    if setting == "one":
        devices = jax.devices()[:1]
    elif setting == "pmap":
        config.parallel = "pmap"
    else:
        for kv in setting.split(","):
            k, v = kv.split("=")
            config.mesh[k] = int(v)
    data, mcfg, model, runner = loop.build(config, devices=devices)
    state = runner.init(jax.random.key(config.seed))
    losses = []
    for step in range(steps):
        state, metrics = runner.train(state, data.train.batch(step))
        m = jax.device_get(metrics)
        losses.append(float(m["loss"] / m["weight"]))
    out = {"losses": losses, "n_devices": jax.device_count()}
    if setting != "pmap":
        flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
        out["shardings"] = {
            jax.tree_util.keystr(p): {"spec": str(x.sharding.spec), "shape": list(x.shape),
                                      "shard_shape": list(x.addressable_shards[0].data.shape)}
            for p, x in flat}
        mu = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) >= 2]
        out["opt_state_sharded"] = [str(x.sharding.spec) for x in mu[:4]]
    return out


if __name__ == "__main__":
    arch, directory, steps, *settings = sys.argv[1:]
    print(json.dumps({s: run(arch, directory, int(steps), s) for s in settings}))
