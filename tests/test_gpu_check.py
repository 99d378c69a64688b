"""experiments/gpu_check.py, the one-go GPU measurement, at tiny sizes on CPU: every part runs and is recorded."""

import json
import os
import subprocess
import sys

import pytest

from tests import helpers


@pytest.mark.slow
@pytest.mark.gpu_smoke
def test_gpu_check_runs_every_part_in_smoke_mode(tmp_path):
    out = tmp_path / "gpu_check.json"
    r = subprocess.run([sys.executable, "-m", "experiments.gpu_check", "--smoke", f"--out={out}",
                        f"--train_files={helpers.small_corpus(str(tmp_path))}"], cwd=helpers.ROOT,
                       capture_output=True, text=True, timeout=900, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads(out.read_text())
    assert set(record["parts"]) == {"agreement", "speed", "compile_cache", "loss_memory"}
    assert all("error" not in p for p in record["parts"].values()), {k: v.get("error") for k, v in
                                                                    record["parts"].items()}
    assert all(a["agree"] for a in record["parts"]["agreement"]["result"].values())
    speed = record["parts"]["speed"]["result"]
    assert [len(speed[k]) for k in ("gpt2_attention", "gpt2_cudnn_scan_remat", "bert_base", "t5_small")] == [2, 3, 2, 2]
    cache = record["parts"]["compile_cache"]["result"]
    assert cache["warm"]["compile_s"] < cache["cold"]["compile_s"]
