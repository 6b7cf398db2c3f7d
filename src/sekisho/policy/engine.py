"""Compile a policy document once, then decide requests with `evaluate` (the PDP).

A document is `{"allow": BLOCK, "deny": BLOCK}` (either optional). A BLOCK is a mapping
with exactly one of `and` / `or` / `not` whose value is a non-empty list of items; an item
is a nested BLOCK or a criterion `{name: argument}`. Deny wins; a request that no allow
block matches is denied. There is one form only: anything else is a `PolicyError` naming
the path and what is expected, because a policy that "sort of" parses is a policy that
allows something nobody meant to allow.

`guard(guardrail, policy)` puts a route's policy under a segment guardrail (see
`policy.guardrails`): the result is again a `Policy`, so `evaluate` stays the one entry point.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sekisho.policy import _nodes
from sekisho.policy.criteria import CRITERIA
from sekisho.policy.criteria._base import is_list, type_name
from sekisho.policy.errors import Path, PolicyError
from sekisho.policy.facts import Decision, Facts

OPERATORS = ("and", "or", "not")
SECTIONS = ("allow", "deny")
MAX_DEPTH = 16  # deeper nesting is a mistake (or an attempt to exhaust the stack)

DEFAULT_DENY = Decision(False, ("default-deny",))
POLICY_ERROR = Decision(False, ("policy-error",))


@dataclass(frozen=True, slots=True)
class Policy:
    """A compiled policy: immutable, shareable between routes, threads and requests."""

    name: str
    allow: _nodes.Run | None
    deny: _nodes.Run | None
    # The document as written, for `explain` (the compiled closures cannot show themselves).
    document: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # The guardrail this policy is evaluated under (`guard`); its verdict is already part of
    # `deny`, it is kept here so `explain` can show it.
    guardrail: Policy | None = field(default=None, compare=False, repr=False)
    # Whether a decision can change with the time of the request alone (`Facts.now`): true
    # when any criterion reads the clock (`Criterion.reads_clock`). Only decisions of a
    # policy without it may be reused for the same facts (gateway.decisions).
    clock: bool = field(default=True, compare=False)


def evaluate(facts: Facts, policy: Policy) -> Decision:
    """Decide one request: deny wins, then allow, else deny by default.

    Fails closed: any exception while deciding (e.g. facts of the wrong type) returns a
    denial with the reason `policy-error` instead of propagating into the gateway.
    """
    try:
        deny = policy.deny
        if deny is not None:
            outcome = deny(facts)
            if outcome.value:
                return outcome.as_deny
        allow = policy.allow
        if allow is None:
            return DEFAULT_DENY
        return allow(facts).as_allow
    except Exception:
        return POLICY_ERROR


_NOT_MATCHED = _nodes.Outcome.make(False, ())
_GUARDRAIL_DEFAULT_DENY = _nodes.Outcome.make(True, ("default-deny",))


def guard(guardrail: Policy, policy: Policy) -> Policy:
    """`policy` evaluated under `guardrail`: the guardrail first, then the route's policy.

    The guardrail's verdict becomes the first part of the combined policy's `deny`: when the
    guardrail denies (its deny block matched, or its allow block did not), the request is
    denied with the guardrail's own reasons — so `mfa-required` from a guardrail still sends
    the user to step up. Otherwise the route's policy decides as if alone. A route policy can
    therefore only narrow what the guardrail lets through, never widen it; an exception in
    either part reaches `evaluate`'s handler and denies (`policy-error`).
    """
    if guardrail.guardrail is not None or policy.guardrail is not None:
        raise ValueError("a guardrail cannot be guarded, and a policy is guarded once")
    guard_deny, guard_allow, route_deny = guardrail.deny, guardrail.allow, policy.deny

    def deny(facts: Facts) -> _nodes.Outcome:
        if guard_deny is not None:
            outcome = guard_deny(facts)
            if outcome.value:
                return outcome
        if guard_allow is None:
            return _GUARDRAIL_DEFAULT_DENY
        outcome = guard_allow(facts)
        if not outcome.value:
            return outcome.negated  # same reasons, now "the deny side matched"
        if route_deny is not None:
            return route_deny(facts)
        return _NOT_MATCHED

    return Policy(policy.name, policy.allow, deny, policy.document, guardrail,
                  guardrail.clock or policy.clock)


def compile_policy(name: str, document: Mapping[str, Any]) -> Policy:
    """Check and compile one policy document; raises `PolicyError` naming the bad path."""
    try:
        if not isinstance(document, Mapping):
            raise PolicyError(
                (),
                f"expected a mapping with 'allow' and/or 'deny', got {type_name(document)}",
                f"'allow' または 'deny' を持つマッピングを指定してください"
                f"（指定値の型: {type_name(document)}）",
            )
        unknown = [key for key in document if key not in SECTIONS]
        if unknown:
            key = unknown[0]
            raise PolicyError(
                (str(key),),
                f"unknown key {key!r} (expected 'allow' and/or 'deny')",
                f"不明なキー {key!r} です（'allow' または 'deny' を指定してください）",
            )
        allow = document.get("allow")
        deny = document.get("deny")
        return Policy(
            name=name,
            allow=_block(allow, ("allow",), False, 1).run if "allow" in document else None,
            deny=_block(deny, ("deny",), True, 1).run if "deny" in document else None,
            document=document,
            clock=reads_clock(document),
        )
    except PolicyError as error:
        error.policy = name
        raise


def reads_clock(document: Any) -> bool:
    """Whether any criterion of a checked policy document reads the time of the request."""
    if isinstance(document, Mapping):
        return any(reads_clock(value) if key in OPERATORS or key in SECTIONS
                   else CRITERIA[key].reads_clock(value) for key, value in document.items())
    return any(reads_clock(item) for item in document) if is_list(document) else False


def _block(value: Any, path: Path, negated: bool, depth: int) -> _nodes.Node:
    if depth > MAX_DEPTH:
        raise PolicyError(
            path,
            f"blocks are nested more than {MAX_DEPTH} deep",
            f"ブロックの入れ子が {MAX_DEPTH} 段を超えています",
        )
    if not isinstance(value, Mapping) or len(value) != 1 or next(iter(value)) not in OPERATORS:
        got = (
            f"keys {', '.join(repr(k) for k in value)}"
            if isinstance(value, Mapping)
            else type_name(value)
        )
        raise PolicyError(
            path,
            f"expected a block with exactly one of 'and', 'or', 'not', got {got}",
            f"'and'・'or'・'not' のいずれか 1 つだけを持つブロックを指定してください（{got}）",
        )
    ((operator, items),) = value.items()
    item_path = (*path, operator)
    if not is_list(items) or not items:
        raise PolicyError(
            item_path,
            f"expected a non-empty list of criteria or blocks, got "
            f"{'an empty list' if is_list(items) else type_name(items)}",
            "条件またはブロックの空でないリストを指定してください",
        )
    inner_negated = not negated if operator == "not" else negated
    children: list[_nodes.Node] = []
    for index, item in enumerate(items):
        nodes = _item(item, (*item_path, index), inner_negated, depth)
        # A criterion of several checks is their `and`: spliced into an enclosing `and`
        # (same value, same reasons) so the block keeps its all-leaves fast path.
        if operator == "and":
            children += nodes
        else:
            children.append(_nodes.all_of(nodes))
    if operator == "and":
        return _nodes.all_of(children)
    if operator == "or":
        return _nodes.any_of(children)
    return _nodes.none_of(children)


def _item(value: Any, path: Path, negated: bool, depth: int) -> list[_nodes.Node]:
    if not isinstance(value, Mapping) or len(value) != 1:
        got = f"{len(value)} keys" if isinstance(value, Mapping) else type_name(value)
        raise PolicyError(
            path,
            f"expected a single-key mapping: a criterion such as {{group: staff}} or a "
            f"block with 'and', 'or' or 'not', got {got}",
            f"キーが 1 つのマッピング（{{group: staff}} のような条件、または 'and'・'or'・"
            f"'not' のブロック）を指定してください（{got}）",
        )
    ((key, argument),) = value.items()
    if key in OPERATORS:
        return [_block(value, path, negated, depth + 1)]
    criterion = CRITERIA.get(key) if isinstance(key, str) else None
    if criterion is None:
        names = ", ".join(CRITERIA)
        raise PolicyError(
            (*path, str(key)),
            f"unknown criterion {key!r} (expected one of: {names}; or a block: and, or, not)",
            f"不明な条件 {key!r} です（{names} のいずれか、または and・or・not のブロック）",
        )
    return [_nodes.leaf(check.predicate, check.passed_reason, check.failed_reason, negated)
            for check in criterion.checks(argument, (*path, key))]
