"""Bad input a new user tried, on the command line: one `error:` line naming the flag the user passed (not one the
value was copied into), exit status 2, no traceback."""

import os
import subprocess
import sys

import pytest

from experiments.configs import finetune
from tests import helpers
from train import errors, workdir

MISSING = "/no/such/dir"


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=helpers.ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.parametrize("module,args,expect", [
    ("experiments.sweep", ["--sweep=experiments/ablations/position.py", "--seeds=0", "--dry_run"],
     "error: --seeds=0: give N >= 1 (seeds 0 .. N-1), or leave --seeds out for the sweep file's seeds list"),
    ("train.main", ["--config=experiments/configs/gpt.py:tiny", f"--config.init_from={MISSING}"],
     f"error: --config.init_from={MISSING} does not exist: pass a directory written by train.main or "
     "experiments.hf_import"),
    ("experiments.probes", [f"--pretrained={MISSING}"], f"error: --pretrained={MISSING} does not exist"),
    ("experiments.probes", [f"--pretrained={MISSING}", "--zero_shot"], f"error: --pretrained={MISSING} does not exist"),
], ids=["sweep-seeds", "main-init_from", "probes", "probes-zero_shot"])
def test_bad_input_is_one_line_naming_the_flag_given(tmp_path, module, args, expect):
    corpus = helpers.small_corpus(str(tmp_path), lines=200)  # train.main reads the corpus before init_from's config
    data = [f"--config.data.train_files={corpus}", "--config.data.tokenizer_type=byte",
            f"--config.data.cache_dir={tmp_path}/cache", "--config.data.seq_len=32",
            "--config.train.batch_size=2"] if module == "train.main" else []
    r = _run(module, f"--workdir={tmp_path}/run", *args, *data)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(expect), r.stderr
    assert "--workdir=/no" not in r.stderr


def test_fine_tuning_names_the_flag_its_pretrained_run_came_from():
    c = finetune.get_config("task=word_order")
    c.init_from = MISSING
    with pytest.raises(errors.UserError, match=f"^--config.init_from={MISSING} does not exist"):
        workdir.inherit_pretrained(c)
    c.init_from, c.task.model_from = "", MISSING
    with pytest.raises(errors.UserError, match=f"^--config.task.model_from={MISSING} does not exist"):
        workdir.inherit_pretrained(c)
