"""The lab's roles, runs and command line."""

import os

# MKL's strict reproducibility mode (the same bits on any thread count), set before anything
# in the package multiplies and inherited by Ray's local workers: why, and the check that it
# is in effect before a fit takes more threads, are in actors/fit_cores.py. A user's own
# setting wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
