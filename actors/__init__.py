"""The lab's roles, runs and command line."""

import os

# MKL's strict reproducibility mode: a product gives the same bits on any number of threads
# (on Intel CPUs MKL's small-batch sgemm otherwise splits its sums by thread count), so an
# attack fit that takes idle cores (actors/fit_cores.py) fits what it would on one. MKL reads
# this at its first call, so it is set here, before anything in the package multiplies, and
# child processes (Ray's workers on a local cluster, subprocesses) inherit it. A user's own
# setting wins; actors.fit_cores.threads_agree checks that it is in effect before a fit
# takes more than one thread.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
