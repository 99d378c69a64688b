"""Reliability under bad input and faults: one workdir, one run (a lock that kill -9 does not leave behind);
impossible config values refused before anything is built; flag mistakes as one clean line; a corrupt newest
checkpoint skipped with one warning line and replaced by the resumed run."""

import glob
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from experiments.configs import base, finetune
from tests import helpers
from train import errors, validate
from train import workdir as workdir_lib

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _main(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.main", *args], cwd=helpers.ROOT, capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def _wait(predicate, p: subprocess.Popen, what: str, timeout: float = 120) -> None:
    t0 = time.time()
    while not predicate():
        assert p.poll() is None, f"exited before {what}: {p.communicate()[1][-3000:]}"
        assert time.time() - t0 < timeout, f"no {what} after {timeout} s"
        time.sleep(0.05)


# ---- 1. One run per workdir ----------------------------------------------------------------------------------------

_HOLD = ("import sys, time; from train import workdir\n"
         "with workdir.claim(sys.argv[1]):\n"
         "    print('held', flush=True); time.sleep(600)\n")


def test_a_held_workdir_is_refused_naming_the_holder_and_freed_by_kill_9(tmp_path):
    work = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, work], cwd=helpers.ROOT, env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "held", holder.communicate()[1][-3000:]
        with pytest.raises(errors.UserError) as e:
            with workdir_lib.claim(work):
                pass
        msg = str(e.value)
        assert msg.startswith(f"--workdir={work} is in use by another run")
        assert f"pid {holder.pid} on {socket.gethostname()}" in msg and "choose another --workdir" in msg
        with workdir_lib.claim(work, lock=False):  # the other processes of a multi-process run share it
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    with workdir_lib.claim(work):  # the OS dropped the killed holder's lock; its .lock file blocks nothing
        with open(os.path.join(work, workdir_lib.LOCK_FILE)) as f:
            assert f.read().strip() == f"pid {os.getpid()} on {socket.gethostname()}"


def test_a_claim_is_released_when_its_block_ends(tmp_path):
    work = str(tmp_path / "run")
    with workdir_lib.claim(work):
        with pytest.raises(errors.UserError, match="is in use by another run"):  # flock: per open file, so here too
            with workdir_lib.claim(work):
                pass
    with workdir_lib.claim(work):
        pass


@pytest.mark.parametrize("kind,expect", [
    ("proc", "--workdir=/proc/x cannot be created (No such file or directory): choose a writable directory"),
    ("file", "is a file, not a directory: choose a directory"),
])
def test_a_workdir_that_cannot_be_made_is_one_message(tmp_path, kind, expect):
    (tmp_path / "f").write_text("a file")
    with pytest.raises(errors.UserError, match="^--workdir=") as e:
        with workdir_lib.claim("/proc/x" if kind == "proc" else str(tmp_path / "f")):
            pass
    assert expect in str(e.value)


def test_main_refuses_a_second_run_on_the_same_workdir(tmp_path):
    corpus = helpers.small_corpus(str(tmp_path))
    work = str(tmp_path / "run")
    args = ["--config=experiments/configs/gpt.py:tiny", f"--workdir={work}", f"--config.data.train_files={corpus}",
            "--config.data.vocab_size=512", f"--config.data.cache_dir={tmp_path}/cache",
            "--config.train.progress_bar=False"]
    first = subprocess.Popen([sys.executable, "-m", "train.main", *args], cwd=helpers.ROOT, env=ENV, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = os.path.join(work, workdir_lib.LOCK_FILE)
        _wait(lambda: os.path.exists(lock) and os.path.getsize(lock) > 0, first, "a lock")
        second = _main(*args, timeout=60)  # refused at once; a second run that trains instead times out
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    assert second.returncode == 2, second.stderr[-3000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert lines[0].startswith(f"error: --workdir={work} is in use by another run (pid {first.pid} on ")


# ---- 2. Config values that cannot mean anything --------------------------------------------------------------------

@pytest.mark.parametrize("field,value,expect", [
    ("train.steps", -5, "train.steps=-5 must be positive"),
    ("train.steps", 0, "train.steps=0 must be positive"),
    ("train.learning_rate", -1.0, "train.learning_rate=-1.0 must be >= 0"),
    ("train.learning_rate", float("nan"), "train.learning_rate=nan must be a finite number"),
    ("train.microbatches", 0, "train.microbatches=0 must be at least 1"),
    ("train.warmup_steps", -1, "train.warmup_steps=-1 must be >= 0"),
    ("train.min_lr_ratio", 1.5, "train.min_lr_ratio=1.5 must be in [0, 1]"),
    ("train.b1", 1.0, "train.b1=1.0 must be in [0, 1)"),
    ("train.b2", -0.1, "train.b2=-0.1 must be in [0, 1)"),
    ("train.eps", 0.0, "train.eps=0.0 must be positive"),
    ("train.momentum", 1.0, "train.momentum=1.0 must be in [0, 1)"),
    ("train.weight_decay", -0.1, "train.weight_decay=-0.1 must be >= 0"),
    ("train.grad_clip", -1.0, "train.grad_clip=-1.0 must be >= 0"),
    ("train.log_every", 0, "train.log_every=0 must be positive"),
    ("train.eval_every", -1, "train.eval_every=-1 must be positive"),
    ("train.eval_steps", 0, "train.eval_steps=0 must be at least 1"),
    ("train.checkpoint_every", 0, "train.checkpoint_every=0 must be positive"),
    ("train.keep_checkpoints", 0, "train.keep_checkpoints=0 must be at least 1"),
    ("train.nonfinite", "halt", "train.nonfinite='halt' is unknown: choose 'stop'"),
    ("objective.label_smoothing", 1.0, "objective.label_smoothing=1.0 must be in [0, 1)"),
    ("objective.z_loss", -1e-4, "objective.z_loss=-0.0001 must be >= 0"),
])
def test_validate_names_the_field_the_value_and_the_range(field, value, expect):
    config = helpers.override(base.base_config("gpt", "tiny"), **{field: value})
    with pytest.raises(errors.UserError) as e:
        validate.validate(config)
    assert str(e.value).startswith(expect)


@pytest.mark.parametrize("config", [
    base.get_config("gpt", "tiny"), base.get_config("gpt", "gpt2"), base.get_config("bert", "bert-base"),
    base.get_config("t5", "t5.1.1-small"), finetune.get_config("task=jsonl"),  # eval_steps=0 = all (classify)
    helpers.override(base.base_config("gpt", "tiny"), **{"train.learning_rate": 0.0, "train.grad_clip": 0.0,
                                                        "train.warmup_steps": 0, "train.momentum": 0.0}),
], ids=["gpt-tiny", "gpt2", "bert-base", "t5.1.1-small", "finetune-jsonl", "zeros"])
def test_validate_accepts_the_shipped_configs_and_the_zeros_that_mean_off(config):
    validate.validate(config)


def test_build_validates_before_it_reads_any_data(tmp_path):
    from train import loop

    config = helpers.tiny_config("gpt", str(tmp_path), **{"train.steps": -5,
                                                          "data.train_files": str(tmp_path / "missing.txt")})
    with pytest.raises(errors.UserError, match=r"^train\.steps=-5 must be positive"):  # not the missing file
        loop.build(config)


# ---- 3. Flag mistakes as one clean line ----------------------------------------------------------------------------

@pytest.mark.parametrize("args,expect", [
    (["--config.train.steps=-5"], "error: train.steps=-5 must be positive"),
    (["--config.train.step=3"], "error: --config.train.step is not a config field; did you mean "
                                "--config.train.steps? (see experiments/configs/base.py for the fields that exist)"),
    (["--config.train.steps=abc"], "error: flag --config.train.steps=abc: invalid literal for int() with base 10: "
                                   "'abc'"),
    (["--config=experiments/configs/nope.py:tiny"], "error: --config=experiments/configs/nope.py:tiny: the config "
                                                    "file experiments/configs/nope.py does not exist"),
    (["--config=experiments/configs/nope.py:tiny", "--config.train.steps=2"], "error: --config=experiments/configs/"
                                                                              "nope.py:tiny: the config file"),
    (["--workdir=/proc/x"], "error: --workdir=/proc/x cannot be created (No such file or directory): choose a "
                            "writable directory"),
], ids=["steps", "unknown-field", "not-an-int", "no-config-file", "no-config-file-with-override", "workdir"])
def test_main_bad_input_is_one_clean_line(tmp_path, args, expect):
    r = _main("--config=experiments/configs/gpt.py:tiny", f"--workdir={tmp_path}/run", *args)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expect), r.stderr[-3000:]
    assert "\\n" not in lines[0] and "\\'" not in lines[0]


# ---- 4. A corrupt newest checkpoint --------------------------------------------------------------------------------

def _corrupt(step_dir: str) -> int:
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
             if os.path.isfile(f)]
    for f in files:
        with open(f, "wb") as out:
            out.write(b"not an array" * 8)
    return len(files)


def test_a_corrupt_newest_checkpoint_is_one_warning_and_is_replaced(tmp_path, capfd, caplog):
    from train import loop

    config = helpers.tiny_config("gpt", str(tmp_path))  # 6 steps, checkpoints at 3 and 6
    work = str(tmp_path / "run")
    loop.train_and_evaluate(config, work)
    assert _corrupt(os.path.join(work, "checkpoints", "6")) > 0
    capfd.readouterr()
    unraisable, hook = [], sys.unraisablehook
    sys.unraisablehook = unraisable.append  # what would otherwise print "Exception ignored in ..." tracebacks
    try:
        with caplog.at_level(logging.INFO):
            resumed = loop.train_and_evaluate(config, work)
    finally:
        sys.unraisablehook = hook
    out, err = capfd.readouterr()
    assert resumed["start_step"] == 3
    assert "Traceback" not in out + err and not unraisable, (err[-3000:], unraisable[:3])
    warned = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warned) == 1 and "checkpoints/6 is unreadable" in warned[0] and "\n" not in warned[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # The resumed run wrote a good checkpoint 6 in place of the corrupt one (it did not keep the corrupt one).
    assert loop.train_and_evaluate(config, work)["start_step"] == 6


_RESUME = ("import sys; from tests import helpers; from train import loop\n"
           "print(loop.train_and_evaluate(helpers.tiny_config('gpt', sys.argv[1]), sys.argv[2])['start_step'])\n")


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_prints_no_traceback_up_to_exit(tmp_path):
    """As above, in a process of its own: the abandoned reads also report when the interpreter exits."""
    from train import loop

    work = str(tmp_path / "run")
    loop.train_and_evaluate(helpers.tiny_config("gpt", str(tmp_path)), work)
    assert _corrupt(os.path.join(work, "checkpoints", "6")) > 0
    r = subprocess.run([sys.executable, "-c", _RESUME, str(tmp_path), work], cwd=helpers.ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ["3"], r.stderr[-3000:]
    for noise in ("Traceback", "Exception ignored", "never retrieved", "never awaited"):
        assert noise not in r.stderr, r.stderr[-3000:]
    assert r.stderr.count("is unreadable") == 1
