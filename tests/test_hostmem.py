"""train/hostmem.py: when the tools re-execute with huge pages, and that the re-executed process has the tunable."""

import os
import subprocess
import sys

from train import hostmem


def test_wanted_on_linux_unless_turned_off_or_already_set():
    assert hostmem.wanted({}, "linux")
    assert not hostmem.wanted({}, "darwin")
    assert not hostmem.wanted({"TRIAD_HUGEPAGES": "0"}, "linux")
    assert not hostmem.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "linux")  # the user's own choice
    assert hostmem.wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "linux")


def test_tuned_environ_keeps_other_tunables():
    assert hostmem.tuned_environ({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    env = hostmem.tuned_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "X": "1"}


PROGRAM = """
import os, sys
from train import errors
def main(argv):
    print("TUNABLES=" + os.environ.get("GLIBC_TUNABLES", "") + ";")
sys.exit(errors.run_app(main))
"""


def _run(env):
    env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_run_app_reexecutes_once_with_the_tunable():
    if not sys.platform.startswith("linux"):
        return
    out = _run({"GLIBC_TUNABLES": None, "TRIAD_HUGEPAGES": None})
    assert out == "TUNABLES=glibc.malloc.hugetlb=1;", out
    assert _run({"GLIBC_TUNABLES": None, "TRIAD_HUGEPAGES": "0"}) == "TUNABLES=;", "opt-out ignored"
