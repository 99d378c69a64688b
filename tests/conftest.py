"""Settings for every test."""

import os

# compare, sweep and the report measure this CPU's peak FLOP/s (a 4096^2 matmul: about 5 s of 2 cores) the first
# time a process needs it unless it is pinned. No test checks an MFU against that peak; tests/test_experiments.py
# checks the measurement on a small matmul.
os.environ.setdefault("TRIAD_CPU_PEAK_FLOPS", "1e11")
