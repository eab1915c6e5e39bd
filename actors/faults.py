"""Failures on purpose and on accident: ``--chaos ROLE@STEP``, crashes, dead roles.

A role armed with ``arm_chaos(step)`` raises ``Crash`` when it reaches that global training
step. ``Crash`` is a BaseException so that no ``except Exception`` on the way (a role drops and
counts ordinary bad frames) can swallow it: the backend turns it into a real death — the Ray
actor's process exits; ``LocalBackend`` drops the object — and the lab sees ``RoleDiedError``
from whichever call was in flight, as it would for a lost node, and has the backend rebuild
the dead role from its start-up arguments (``Backend.revive``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol.errors import ConfigError, SplitWireError

_CHAOS_RE = re.compile(r"^(server|owner:(\d+))@(\d+)$")


@dataclass(frozen=True)
class ChaosSpec:
    """Kill ``role`` when it handles global training step ``step`` (0-based)."""

    role: str  # "server" or "owner:I"
    step: int

    def __str__(self) -> str:
        return f"{self.role}@{self.step}"


def parse_chaos(text: str) -> ChaosSpec:
    match = _CHAOS_RE.match(text.strip())
    if match is None:
        raise ConfigError(f"--chaos must be server@STEP or owner:I@STEP, got {text!r}")
    return ChaosSpec(match.group(1), int(match.group(3)))


class Crash(BaseException):  # noqa: N818 - it is not an error: it is the failure we asked for
    """Raised inside a role to simulate its process dying (--chaos)."""

    def __init__(self, role: str, step: int) -> None:
        super().__init__(f"chaos: {role} killed at step {step}")
        self.role = role


class RoleDiedError(RuntimeError):
    """A call failed because a role (or its node) died; the lab recovers or stops cleanly."""


class RunLostError(SplitWireError):
    """The run cannot continue (a role cannot be brought back); a checkpoint says where."""
