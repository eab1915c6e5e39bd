"""The environment Ray must see before it is imported (it reads these at import time).

Kept apart from ``actors.ray_backend`` so that anything — the CLI, the test suite's conftest —
can set it up before the first ``import ray`` in the process.
"""

from __future__ import annotations

import os
from pathlib import Path


def prepare() -> None:
    # A local cluster binds loopback only (Ray binds the machine's public address otherwise).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # `ray start --head` turns token authentication on and keeps the token in
    # ~/.ray/auth_token; a driver joining it must present the token, and every process of one
    # cluster must agree on the mode.
    if (Path.home() / ".ray" / "auth_token").is_file():
        os.environ.setdefault("RAY_AUTH_MODE", "token")
