"""Per-party query budgets: cap how many inferences any one party can obtain.

Black-box inversion and model-stealing attacks need many queries; a budget bounds what each
querying party can learn, and it is also how per-query privacy (see ``defences.noise``) is kept
from composing without limit. Counts are kept per party name; a batch that would overrun the
budget is answered in part (the first queries up to the limit) and the rest refused.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from defences.base import Param, QueryBudgetExceeded, QueryGate
from protocol.errors import ConfigError

__all__ = ["QueryBudget", "QueryBudgetExceeded"]

_FLAG = "--defence query-budget"


class QueryBudget(QueryGate):
    """At most ``limit`` answered queries per party, counted over the life of the object.

    Shape-free: it counts examples (the batch dimension), whatever an oracle query looks like.
    """

    name: ClassVar[str] = "query-budget"
    params: ClassVar[dict[str, Param]] = {"limit": Param("int", required=True)}

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError(f"{_FLAG}: limit must be an integer >= 0, got {limit!r}")
        self.limit = limit
        self._answered: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        # Actors may serve requests from several threads; charging must not double-spend.
        self._lock = threading.Lock()

    def charge(self, party: str, n: int) -> int:
        """Spend up to ``n`` of ``party``'s queries; return how many are answered (0..n)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            # A programming error, not a user's flag: plain ValueError.
            raise ValueError(f"query count must be an integer >= 0, got {n!r}")
        with self._lock:
            used = self._answered.get(party, 0)
            granted = min(n, self.limit - used)
            self._answered[party] = used + granted
            self._refused[party] = self._refused.get(party, 0) + (n - granted)
        return granted

    def refusal(self, party: str, n: int) -> str:
        return (
            f"party {party!r} has used its query budget of {self.limit} "
            f"({_FLAG}:limit={self.limit}); {n} queries refused"
        )

    def refund(self, party: str) -> None:
        """Give ``party`` its whole budget back (its refusals stay on record).

        Not something an owner would do: the lab uses it to score alternative strategies,
        each as if the party had spent the whole budget on it.
        """
        with self._lock:
            self._answered.pop(party, None)

    def answered(self, party: str) -> int:
        """Queries answered for ``party`` so far."""
        with self._lock:
            return self._answered.get(party, 0)

    def refused(self, party: str) -> int:
        """Queries refused to ``party`` so far."""
        with self._lock:
            return self._refused.get(party, 0)

    def remaining(self, party: str) -> int:
        """Queries ``party`` may still have answered."""
        return self.limit - self.answered(party)

    # Locks do not pickle; Ray ships objects by pickling, so drop it and make a fresh one.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"QueryBudget(limit={self.limit})"
