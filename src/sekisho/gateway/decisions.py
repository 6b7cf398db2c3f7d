"""Allowed decisions remembered for the exact inputs they were made on.

The PDP is a pure function of the request's facts (`policy.evaluate`), and the facts are a
function of the session, the route and the request. So a decision can be reused, without
changing any outcome, for as long as every one of those inputs is provably the same:

- the request: same session, route, method, normalised path, host and client address (the
  memo's key); requests with a client certificate are always decided afresh (the device
  registry has its own freshness);
- the policy: same config snapshot (the memo is emptied when the snapshot changes), and a
  policy none of whose criteria reads the clock (`Policy.clock`: no hours, no auth age);
- the session: `SessionManager.quiet(info)` — the session cache would return this very
  value and do nothing else (no storage read, no `last_seen_at` touch, no refresh). An
  eviction (revocation, sign-out, a changed user) or a newer read ends it at once.

Only allows with a session are remembered; a deny, a sign-in redirect or a step-up is always
decided afresh, as is every request when the session store offers no `quiet` (a test's
stand-in). What is saved is the session lookup, building the facts and the evaluation: about
a fifth of a worker's instructions per proxied request (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sekisho.gateway.pep import Verdict
    from sekisho.runtime import Runtime

MAX_ENTRIES = 4096  # then the memo starts over: a miss only decides afresh

# (session id — the token's SHA-256, never the token —, route id, method, normalised path,
# host, client address)
Key = tuple[str, str, str, str, str, str]


class DecisionMemo:
    """Per process; used from the event loop only."""

    __slots__ = ("_entries", "_quiet", "_runtime")

    def __init__(self, sessions: Any) -> None:
        # The session store's `quiet(info) -> bool`, or None: then nothing is remembered.
        self._quiet: Callable[[Any], bool] | None = getattr(sessions, "quiet", None)
        self._entries: dict[Key, Verdict] = {}
        self._runtime: Runtime | None = None

    def recall(self, runtime: Runtime, key: Key) -> Verdict | None:
        """The remembered allow for exactly this request, while it still holds; else None."""
        if runtime is not self._runtime:
            return None
        verdict = self._entries.get(key)
        if verdict is None:
            return None
        quiet = self._quiet
        if quiet is not None and quiet(verdict.session):
            return verdict
        del self._entries[key]
        return None

    def remember(self, runtime: Runtime, key: Key, verdict: Verdict) -> None:
        """Keep an allow made with a session. The caller asks only for a policy that does not
        read the clock (`Policy.clock`), and for a request without a client certificate."""
        if self._quiet is None or verdict.session is None or verdict.decision.allow is not True:
            return
        if runtime is not self._runtime:
            self._entries, self._runtime = {}, runtime
        elif len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = verdict
