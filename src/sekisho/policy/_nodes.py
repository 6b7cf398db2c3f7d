"""Compiled policy nodes: closures from `Facts` to a preallocated `Outcome`.

Every outcome a node can return is built at compile time whenever its reasons are fixed
(a criterion's, an `and` whose children all passed, an `or` whose children all failed), and
each outcome carries its final `Decision` objects, so a typical evaluation allocates
nothing. Only outcomes that combine children with varying reasons are built during
evaluation, and those are interned per node (the set of combinations is finite).

Reason polarity: a criterion reports its pass reason when its result works towards allowing
the request and its fail reason when it works towards denying. Inside a `deny` block or a
`not`, a match works towards denying, so a leaf's codes are swapped once per such negation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sekisho.policy.criteria import Predicate
from sekisho.policy.facts import Decision, Facts


class Outcome:
    """The value of a node for one request, with the reasons that decided it."""

    __slots__ = ("as_allow", "as_deny", "negated", "reasons", "value")

    value: bool
    reasons: tuple[str, ...]
    negated: Outcome  # the same reasons with the opposite value (used by `not`)
    as_allow: Decision  # the decision when this is the allow block's outcome
    as_deny: Decision  # the decision when this is the deny block's (matching) outcome

    @staticmethod
    def make(value: bool, reasons: tuple[str, ...]) -> Outcome:
        one, other = Outcome(), Outcome()
        for outcome, outcome_value in ((one, value), (other, not value)):
            outcome.value = outcome_value
            outcome.reasons = reasons
            outcome.as_allow = Decision(outcome_value, reasons)
            outcome.as_deny = Decision(False, reasons)
        one.negated, other.negated = other, one
        return one


Run = Callable[[Facts], Outcome]


@dataclass(frozen=True, slots=True)
class Node:
    """A compiled node: `run` evaluates it; the static outcomes are set when fixed."""

    run: Run
    static_true: Outcome | None  # what `run` returns whenever the node is true, if fixed
    static_false: Outcome | None  # likewise when false
    predicate: Predicate | None = None  # set for leaves, so blocks can skip one call


def _combine(outcomes: Sequence[Outcome]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(reason for outcome in outcomes for reason in outcome.reasons))


class _Interned:
    """Outcomes built during evaluation, shared per node: one per distinct reason tuple."""

    __slots__ = ("cache", "value")

    def __init__(self, value: bool) -> None:
        self.value = value
        self.cache: dict[tuple[str, ...], Outcome] = {}

    def get(self, outcomes: Sequence[Outcome]) -> Outcome:
        reasons = _combine(outcomes)
        found = self.cache.get(reasons)
        if found is None:
            found = self.cache.setdefault(reasons, Outcome.make(self.value, reasons))
        return found


def _leaf_pairs(
    children: Sequence[Node], passed: bool
) -> tuple[tuple[Predicate, Outcome], ...] | None:
    """(predicate, outcome when it is `passed`) for each child, if all are leaves."""
    pairs = []
    for child in children:
        outcome = child.static_true if passed else child.static_false
        if child.predicate is None or outcome is None:
            return None
        pairs.append((child.predicate, outcome))
    return tuple(pairs)


def leaf(predicate: Predicate, passed_reason: str, failed_reason: str, negated: bool) -> Node:
    """A criterion, with its codes swapped when an odd number of negations enclose it."""
    on_true = Outcome.make(True, (failed_reason if negated else passed_reason,))
    on_false = Outcome.make(False, (passed_reason if negated else failed_reason,))

    def run(facts: Facts) -> Outcome:
        return on_true if predicate(facts) else on_false

    return Node(run, on_true, on_false, predicate)


def all_of(children: Sequence[Node]) -> Node:
    """`and`: true when every child is; a failure reports the first failing child."""
    if len(children) == 1:
        return children[0]
    statics = [child.static_true for child in children]
    on_true = Outcome.make(True, _combine(statics)) if None not in statics else None  # type: ignore[arg-type]
    pairs = _leaf_pairs(children, passed=False)
    if on_true is not None and pairs is not None:
        all_passed: Outcome = on_true

        def run_leaves(facts: Facts) -> Outcome:
            for predicate, on_false in pairs:
                if not predicate(facts):
                    return on_false
            return all_passed

        return Node(run_leaves, on_true, None)
    runs = tuple(child.run for child in children)
    interned = _Interned(True)

    def run(facts: Facts) -> Outcome:
        passed = []
        for child in runs:
            outcome = child(facts)
            if not outcome.value:
                return outcome
            passed.append(outcome)
        return on_true if on_true is not None else interned.get(passed)

    return Node(run, on_true, None)


def any_of(children: Sequence[Node]) -> Node:
    """`or`: true when a child is; the first true child reports, else all failures do."""
    if len(children) == 1:
        return children[0]
    statics = [child.static_false for child in children]
    on_false = Outcome.make(False, _combine(statics)) if None not in statics else None  # type: ignore[arg-type]
    pairs = _leaf_pairs(children, passed=True)
    if on_false is not None and pairs is not None:
        all_failed: Outcome = on_false

        def run_leaves(facts: Facts) -> Outcome:
            for predicate, on_true in pairs:
                if predicate(facts):
                    return on_true
            return all_failed

        return Node(run_leaves, None, on_false)
    runs = tuple(child.run for child in children)
    interned = _Interned(False)

    def run(facts: Facts) -> Outcome:
        failed = []
        for child in runs:
            outcome = child(facts)
            if outcome.value:
                return outcome
            failed.append(outcome)
        return on_false if on_false is not None else interned.get(failed)

    return Node(run, None, on_false)


def none_of(children: Sequence[Node]) -> Node:
    """`not`: true when no child is (NOR); the children were compiled with swapped codes."""
    inner = any_of(children)
    inner_run = inner.run
    static_true = inner.static_false.negated if inner.static_false is not None else None
    static_false = inner.static_true.negated if inner.static_true is not None else None

    def run(facts: Facts) -> Outcome:
        return inner_run(facts).negated

    return Node(run, static_true, static_false)
