"""Scale-out: the same train/loss sequence on a 1-device mesh, data=8, fsdp=8, data=2,fsdp=2,tensor=2 and under
pmap (8 fake CPU devices in a subprocess), with parameters really sharded; and two jax.distributed processes."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers

MIXED = "data=2,fsdp=2,tensor=2"
SETTINGS = ("one", "data=8", "fsdp=8", MIXED, "pmap")
# The default suite trains GPT with every mesh axis at once and under pmap; the slow suite adds data=8 and fsdp=8
# alone for GPT, and every setting for BERT and T5.
DEFAULT_SETTINGS = ("one", MIXED, "pmap")
SLOW_SETTINGS = {"gpt": ("one", "data=8", "fsdp=8"), "bert": SETTINGS, "t5": SETTINGS}
STEPS = 20


def _env(devices: int) -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _mesh_runs(arch: str, directory: str, settings: tuple[str, ...]) -> dict:
    r = subprocess.run([sys.executable, "-m", "tests.mesh_worker", arch, directory, str(STEPS), *settings],
                       cwd=helpers.ROOT, env=_env(8), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _check_same_losses(runs: dict) -> None:
    reference = np.array(runs["one"]["losses"])
    assert len(reference) == STEPS and reference[-1] < reference[0]
    for setting in sorted(set(runs) - {"one"}):
        np.testing.assert_allclose(runs[setting]["losses"], reference, rtol=1e-5, err_msg=setting)


def _kernels(run: dict) -> dict:
    return {k: v for k, v in run["shardings"].items() if k.endswith("['kernel']")}


def _check_sharded(runs: dict) -> None:
    assert runs["one"]["n_devices"] == 8
    if "data=8" in runs:  # parameters replicated (pure data parallelism)
        assert all(s["spec"] == "P()" for s in runs["data=8"]["shardings"].values())
    if "fsdp=8" in runs:  # every matrix with an 'embed' axis is split 8 ways along it; Adam's moments follow
        kernels = _kernels(runs["fsdp=8"])
        assert kernels and all("fsdp" in v["spec"] for v in kernels.values())
        for v in kernels.values():
            assert np.prod(v["shard_shape"]) * 8 == np.prod(v["shape"])
        assert any("fsdp" in s for s in runs["fsdp=8"]["opt_state_sharded"])
    if MIXED in runs:
        # Every matrix split over fsdp along its 'embed' axis, Adam's moments too; MLP input kernels split over
        # (fsdp, tensor): a quarter on each device.
        kernels = _kernels(runs[MIXED])
        assert kernels and all("fsdp" in v["spec"] for v in kernels.values())
        assert any("fsdp" in s for s in runs[MIXED]["opt_state_sharded"])
        wi = [v for k, v in kernels.items() if "mlp" in k]
        assert wi and all("tensor" in v["spec"] and "fsdp" in v["spec"] for v in wi)
        assert all(np.prod(v["shard_shape"]) * 4 == np.prod(v["shape"]) for v in wi)


def test_meshes_and_pmap_match_one_device_gpt(tmp_path):
    runs = _mesh_runs("gpt", str(tmp_path), DEFAULT_SETTINGS)
    assert set(runs) == set(DEFAULT_SETTINGS)
    _check_same_losses(runs)
    _check_sharded(runs)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt", "bert", "t5"])
def test_meshes_and_pmap_match_one_device(tmp_path, arch):
    runs = _mesh_runs(arch, str(tmp_path), SLOW_SETTINGS[arch])
    assert set(runs) == set(SLOW_SETTINGS[arch])
    _check_same_losses(runs)
    _check_sharded(runs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(arch: str, directory: str, workdir: str) -> list[str]:
    corpus = helpers.small_corpus(directory)
    c = helpers.tiny_config(arch, directory)
    args = [f"--config=experiments/configs/{arch}.py:tiny", f"--workdir={workdir}",
            f"--config.data.train_files={corpus}", f"--config.data.cache_dir={c.data.cache_dir}"]
    for key in ("data.vocab_size", "data.seq_len", "data.prefetch", "model.d_model", "model.n_heads", "model.d_ff",
                "model.n_layers", "model.max_len", "train.batch_size", "train.warmup_steps", "train.log_every",
                "train.eval_every", "train.eval_steps", "train.checkpoint_every"):
        node = c
        for part in key.split("."):
            node = node[part]
        args.append(f"--config.{key}={node}")
    return args + [f"--config.train.steps={STEPS}", "--config.train.progress_bar=False"]


def _losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["train/loss"] for r in map(json.loads, f) if "train/loss" in r}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt", "bert", "t5"])
def test_two_processes_match_one_device(tmp_path, arch):
    """Two processes on 127.0.0.1 with 4 fake CPU devices each (jax.distributed, gloo collectives)."""
    d = str(tmp_path)
    single = subprocess.run([sys.executable, "-m", "train.main", *_train_args(arch, d, f"{d}/one")],
                            cwd=helpers.ROOT, env=_env(1), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "train.main", *_train_args(arch, d, f"{d}/two"),
                               f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
                              cwd=helpers.ROOT, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    one, two = _losses(f"{d}/one"), _losses(f"{d}/two")
    assert sorted(one) == sorted(two) and len(one) == STEPS
    np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(one)], rtol=1e-5)
    with open(f"{d}/two/config.json") as f:
        assert json.load(f)["devices"] == {"backend": "cpu", "count": 8, "kind": "cpu", "processes": 2}


@pytest.mark.slow
def test_in_two_processes_only_process_zero_prepares_the_store(tmp_path):
    """A fresh cache: process 0 tokenizes, process 1 waits for its index (jax.distributed on 127.0.0.1)."""
    d = str(tmp_path)
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "train.main", *_train_args("gpt", d, f"{d}/two"),
                               f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
                              cwd=helpers.ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "prepared 1 of 1 input files" in outs[0][1] and "waits for process 0" not in outs[0][1]
    assert "waits for process 0 to prepare the token store" in outs[1][1] and "prepared" not in outs[1][1]
