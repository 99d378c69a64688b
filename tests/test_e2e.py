"""End to end through `python -m train.main`: kill -9 and restart reproduces the uninterrupted run exactly;
SIGTERM checkpoints before exiting; --config.init_from starts from trained parameters."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import helpers

STEPS = 24


def _args(arch: str, directory: str, workdir: str, **overrides) -> list[str]:
    c = helpers.tiny_config(arch, directory, **{"train.steps": STEPS, "train.checkpoint_every": 8,
                                                "train.eval_every": 12, **overrides})
    args = [f"--config=experiments/configs/{arch}.py:tiny", f"--workdir={workdir}"]
    for group in ("data", "model", "train"):
        for key, value in c[group].items():
            if value != helpers.base.base_config(arch, "tiny")[group][key]:
                args.append(f"--config.{group}.{key}={value}")
    return args


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "train.main", *args], cwd=helpers.ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen) -> str:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    return err


def _losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["train/loss"] for r in map(json.loads, f) if "train/loss" in r}


def _wait_for(path: str, p: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while not os.path.exists(path):
        assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt", "bert", "t5"])
def test_kill_9_then_restart_reproduces_losses(tmp_path, arch):
    d = str(tmp_path)
    _finish(_start(_args(arch, d, f"{d}/straight")))
    p = _start(_args(arch, d, f"{d}/killed"))
    _wait_for(f"{d}/killed/checkpoints/16", p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    err = _finish(_start(_args(arch, d, f"{d}/killed")))
    assert "resumed from" in err
    straight, killed = _losses(f"{d}/straight"), _losses(f"{d}/killed")
    assert sorted(straight) == list(range(1, STEPS + 1))
    assert killed == straight  # every step, bitwise


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path):
    d = str(tmp_path)
    p = _start(_args("gpt", d, f"{d}/run", **{"train.steps": 400, "train.checkpoint_every": 1000}))
    _wait_for(f"{d}/run/metrics.jsonl", p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    steps = sorted(int(s) for s in os.listdir(f"{d}/run/checkpoints") if s.isdigit())
    assert len(steps) == 1 and 0 < steps[0] < 400
    assert max(_losses(f"{d}/run")) <= steps[0]
