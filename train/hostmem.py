"""Transparent huge pages for the host allocator: the command-line tools re-execute once with them on.

XLA:CPU takes each step's temporary buffers from malloc and gives them back afterwards. glibc serves blocks above
32 MiB with a fresh mmap, so every step faults in (and the kernel zeroes) all of its temporaries again, 4 KiB at a
time: a quarter of a CPU training step went to system time. With `glibc.malloc.hugetlb=1` glibc asks for
transparent huge pages on those mappings (madvise), which the kernel of a machine set to THP `madvise` (the common
default) then backs with 2 MiB pages. Same memory, same numbers, faster steps (docs/performance.md).

glibc reads its tunables when a process starts, so `reexec()` replaces the process with itself plus the tunable,
before any flag is parsed. TRIAD_HUGEPAGES=0 turns it off; a GLIBC_TUNABLES that already sets it is respected.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
SETTING = f"{TUNABLE}=1"


def wanted(environ=os.environ, platform: str = sys.platform) -> bool:
    """Whether to re-execute: on Linux, unless TRIAD_HUGEPAGES=0 or GLIBC_TUNABLES already sets the tunable."""
    if not platform.startswith("linux") or environ.get("TRIAD_HUGEPAGES", "1").strip() in ("0", "off", "false"):
        return False
    return TUNABLE not in environ.get("GLIBC_TUNABLES", "")


def tuned_environ(environ=os.environ) -> dict[str, str]:
    """The environment plus the tunable, after any tunables already there (glibc joins them with ':')."""
    current = environ.get("GLIBC_TUNABLES", "")
    return {**environ, "GLIBC_TUNABLES": f"{current}:{SETTING}" if current else SETTING}


def reexec() -> None:
    """Replaces this process with the same command line under the tuned environment (no return), if `wanted()`.

    The command-line tools call it from `errors.run_app`; imports done so far are done again (about 2 s), which the
    Makefile avoids by exporting GLIBC_TUNABLES itself. Nothing has run yet that the new process would miss."""
    if not wanted():
        return
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], tuned_environ())
