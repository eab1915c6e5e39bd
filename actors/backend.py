"""Where roles run: the small interface the lab drives, and its in-process implementation.

The lab (``actors.lab``) only ever says "start this role", "connect everyone", "call this
method". ``LocalBackend`` does that with plain objects in this process (fast unit tests, no Ray);
``actors.ray_backend.RayBackend`` does it with one Ray actor per role on a (multi-node) cluster.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from actors.role import Role
from actors.wire import LocalTransport, Network, Taps

#: Builds a role given its name and the Network it must talk through.
RoleFactory = Callable[..., Role]


class Backend(ABC):
    @abstractmethod
    def start(self, name: str, factory: RoleFactory, taps: Taps = (),
              **kwargs: Any) -> None:
        """Create role ``name`` = factory(name, network=..., **kwargs)."""

    @abstractmethod
    def connect(self) -> None:
        """Tell every started role how to reach every other (after all are started)."""

    @abstractmethod
    def call(self, name: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``role.method(*args)`` and return its result."""

    def call_all(self, calls: Sequence[tuple[str, str, tuple]]) -> list[Any]:
        """Run several calls, concurrently where the backend can; results in order."""
        return [self.call(name, method, *args) for name, method, args in calls]

    def placement(self) -> dict[str, str]:
        """Which node each role runs on."""
        return {}

    def shutdown(self) -> None:  # noqa: B027 - optional hook: LocalBackend has nothing to stop
        """Stop every role this backend started."""


class LocalBackend(Backend):
    """Every role is an object in this process; the wire is a LocalTransport."""

    def __init__(self) -> None:
        self.transport = LocalTransport()
        self.roles: dict[str, Role] = {}

    def start(self, name: str, factory: RoleFactory, taps: Taps = (),
              **kwargs: Any) -> None:
        role = factory(name, network=Network(name, self.transport, taps), **kwargs)
        self.roles[name] = role
        self.transport.add_party(name, role)
        if hasattr(role, "intercept"):
            self.transport.add_tap(name, role.intercept)

    def connect(self) -> None:
        pass  # the shared LocalTransport already knows every party

    def call(self, name: str, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.roles[name], method)(*args, **kwargs)

    def placement(self) -> dict[str, str]:
        return {name: "local" for name in self.roles}
