"""Where roles run: the small interface the lab drives, and its in-process implementation.

The lab (``actors.lab``) only ever says "start this role", "connect everyone", "call this
method". ``LocalBackend`` does that with plain objects in this process (fast unit tests, no Ray);
``actors.ray_backend.RayBackend`` does it with one Ray actor per role on a (multi-node) cluster.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from actors.faults import Crash, RoleDiedError
from actors.role import Role
from actors.wire import LocalTransport, Network, Taps

#: Builds a role given its name and the Network it must talk through.
RoleFactory = Callable[..., Role]
#: What the lab asks a role to run: the method itself (``ComputeServer.arm_chaos``), so a
#: renamed or mistyped method fails at import and in the type checker, not in a remote call.
#: Backends send only its name across processes; plain strings are still accepted.
Method = Callable[..., Any] | str


def method_name(method: Method) -> str:
    return method if isinstance(method, str) else method.__name__


class Backend(ABC):
    @abstractmethod
    def start(self, name: str, factory: RoleFactory, taps: Taps = (),
              **kwargs: Any) -> None:
        """Create role ``name`` = factory(name, network=..., **kwargs). A role with a
        ``parties()`` method (an owner host) also answers for each name it returns."""

    @abstractmethod
    def connect(self) -> None:
        """Tell every started role how to reach every other (after all are started)."""

    @abstractmethod
    def call(self, name: str, method: Method, *args: Any, **kwargs: Any) -> Any:
        """Run ``role.method(*args)`` and return its result; ``RoleDiedError`` if a role died
        on the way (this one, or one it was talking to)."""

    def call_all(self, calls: Sequence[tuple[str, Method, tuple]]) -> list[Any]:
        """Run several calls, concurrently where the backend can; results in order."""
        return [self.call(name, method, *args) for name, method, args in calls]

    def fit_sharers(self, fits: int) -> int | None:
        """How many attack fits share a node's cores while ``fits`` of this run's run side by
        side (``InversionAttacker.fit_attack``), or None: fits keep one thread. In-process
        every role shares the lab's process (and pytest-xdist's workers share the cores), so
        None here."""
        return None

    def submit(self, name: str, method: Method, *args: Any, returns: int = 1) -> Any:
        """Start ``role.method(*args)``; ``fetch`` waits for it. With ``returns`` = 2 the
        method returns a pair and this gives two handles: the second result can stay where it
        is (Ray's object store) and be passed to later calls without reaching the lab."""
        out = self.call(name, method, *args)
        return list(out) if returns > 1 else out

    def fetch(self, handles: Any) -> Any:
        """The value(s) behind ``submit`` handles (a handle or a list of them)."""
        return handles

    def put(self, value: Any) -> Any:
        """Keep ``value`` where every role can read it; pass the handle to calls."""
        return value

    def keep(self, handle: Any, producer: str) -> Any:
        """A handle to the same value (made by role ``producer``) that survives the loss of
        that role's node: a checkpoint must outlive the roles it restores."""
        return handle

    def revive(self) -> list[str]:
        """After ``RoleDiedError``: bring dead roles back (fresh, from their start-up
        arguments) and return their names; ``RunLostError`` if one cannot come back."""
        return []

    def pool_size(self) -> int:
        """How many owner hosts suit this backend by default (sized from its CPUs)."""
        return 1

    def placement(self) -> dict[str, str]:
        """Which node each role runs on."""
        return {}

    def shutdown(self) -> None:  # noqa: B027 - optional hook: LocalBackend has nothing to stop
        """Stop every role this backend started."""


class LocalBackend(Backend):
    """Every role is an object in this process; the wire is a LocalTransport.

    A role that crashes (``Crash``, from ``--chaos``) is rebuilt from its start-up arguments,
    as Ray restarts an actor, and the call in flight raises ``RoleDiedError``.
    """

    def __init__(self) -> None:
        self.transport = LocalTransport()
        self.roles: dict[str, Any] = {}
        self.specs: dict[str, tuple[RoleFactory, Taps, dict[str, Any]]] = {}
        self.host_of: dict[str, str] = {}  # every name on the wire -> the role object's name
        self.dead: set[str] = set()

    def start(self, name: str, factory: RoleFactory, taps: Taps = (),
              **kwargs: Any) -> None:
        self.specs[name] = (factory, taps, kwargs)
        role = factory(name, network=Network(name, self.transport, taps), **kwargs)
        self.roles[name] = role
        for party in (role.parties() if hasattr(role, "parties") else [name]):
            self.transport.add_party(party, role)
            self.host_of[party] = name
        if hasattr(role, "intercept"):
            self.transport.add_tap(name, role.intercept)

    def connect(self) -> None:
        pass  # the shared LocalTransport already knows every party

    def party(self, name: str) -> Any:
        """The object behind a name on the wire (a hosted owner, not its host)."""
        role = self.roles[self.host_of[name]]
        return role.owners[name] if hasattr(role, "owners") else role

    def call(self, name: str, method: Method, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.roles[name], method_name(method))(*args, **kwargs)
        except Crash as crash:
            dead = self.host_of.get(crash.role, crash.role)
            self.dead.add(dead)
            raise RoleDiedError(f"{dead} died ({crash})") from None

    def revive(self) -> list[str]:
        revived = sorted(self.dead)
        for name in revived:
            factory, taps, kwargs = self.specs[name]
            self.start(name, factory, taps, **kwargs)
        self.dead.clear()
        return revived

    def placement(self) -> dict[str, str]:
        return {name: "local" for name in self.host_of}
