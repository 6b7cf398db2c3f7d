"""The policy decision point (PDP): a pure function from request facts to a decision.

`compile_policy(name, document)` checks a YAML-parsed policy once per configuration snapshot;
`evaluate(facts, policy)` decides one request, with reason codes from the closed list in
`REASONS`; `explain(facts, policy)` gives the same decision with a readable trace.
`guard(guardrail, policy)` puts a route's policy under a segment guardrail
(`sekisho.policy.guardrails`), and the result is still decided by `evaluate`.
This package imports nothing else from Sekisho and does no I/O: the gateway
gathers the facts and passes plain data in (see docs/policy.md).
"""

from __future__ import annotations

from sekisho.policy.criteria import CRITERIA, Criterion
from sekisho.policy.engine import (
    DEFAULT_DENY,
    POLICY_ERROR,
    Policy,
    compile_policy,
    evaluate,
    guard,
)
from sekisho.policy.errors import PolicyError
from sekisho.policy.explain import Explanation, Step, explain
from sekisho.policy.facts import Decision, Facts
from sekisho.policy.reasons import REASONS, explain_reason

__all__ = [
    "CRITERIA",
    "DEFAULT_DENY",
    "POLICY_ERROR",
    "REASONS",
    "Criterion",
    "Decision",
    "Explanation",
    "Facts",
    "Policy",
    "PolicyError",
    "Step",
    "compile_policy",
    "evaluate",
    "explain",
    "explain_reason",
    "guard",
]
