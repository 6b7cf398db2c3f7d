"""`explain`: the decision for one request together with a readable trace of how it was made.

An administrator asking "why was tanaka refused?" needs every block and criterion of the
policy with its argument as written, whether it matched and the reason code it reports.
The compiled closures in `Policy` cannot show themselves, so this module walks the policy's
document and evaluates it again, straightforwardly, with the engine's rules (deny wins;
`and` reports its first failing item, `or` its first matching one; codes swapped once per
`deny` or `not`). It is an independent second implementation on purpose: a property test
checks that it reaches the same decision and reasons as `evaluate` for every input, so an
explanation can never describe a decision the gateway did not make.

A policy put under a segment guardrail (`engine.guard`) is explained in two parts, in the
engine's order: the guardrail first; when it denies, its reasons are the decision and the
route's policy is shown as not reached.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time
from typing import Any

from sekisho.policy.criteria import CRITERIA
from sekisho.policy.engine import DEFAULT_DENY, POLICY_ERROR, Policy
from sekisho.policy.errors import Path, format_path
from sekisho.policy.facts import Decision, Facts
from sekisho.policy.reasons import LANGUAGES, explain_reason

_OPERATORS = ("and", "or", "not")


@dataclass(frozen=True, slots=True)
class Step:
    """One node of the trace: a block (`and`/`or`/`not`) or a criterion.

    `reasons` are the codes this node reports, in the engine's polarity; `reached` is False
    for a node the engine never looks at (after a short-circuit, or the allow block when
    deny won) — it is still evaluated here, so the reader sees what it would have said.
    """

    path: str  # e.g. "allow.and[2].source_ip"
    kind: str  # "and" | "or" | "not" | a criterion name
    argument: Any  # the criterion's argument as written; None for a block
    matched: bool
    reasons: tuple[str, ...]
    reached: bool
    children: tuple[Step, ...] = ()
    error: bool = False  # the criterion raised (never reached, or the decision is policy-error)


@dataclass(frozen=True, slots=True)
class Explanation:
    """A decision with its trace.

    `decided_by`: deny, allow, default-deny, policy-error, or guardrail (the guardrail
    denied, so the route's policy did not count). `guardrail` is the guardrail's own
    explanation when the policy was evaluated under one.
    """

    policy: str
    decision: Decision
    decided_by: str
    deny: Step | None
    allow: Step | None
    guardrail: Explanation | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (dates as ISO 8601 text)."""
        out: dict[str, Any] = {
            "policy": self.policy,
            "allow": self.decision.allow,
            "reasons": list(self.decision.reasons),
            "decided_by": self.decided_by,
            "trace": {
                name: _step_dict(step)
                for name, step in (("deny", self.deny), ("allow", self.allow))
                if step is not None
            },
        }
        if self.guardrail is not None:
            out["guardrail"] = self.guardrail.to_dict()
        return out


class _Failed(Exception):
    """A criterion the engine would have reached raised: the decision is policy-error."""


def explain(facts: Facts, policy: Policy) -> Explanation:
    """Decide `facts` with `policy` as `evaluate` does, and say how. Fails closed the same way."""
    guardrail = policy.guardrail
    if guardrail is None:
        return _explain(facts, policy, True)
    verdict = _explain(facts, guardrail, True)
    if verdict.decision.allow is True:
        return replace(_explain(facts, policy, True), guardrail=verdict)
    route = _explain(facts, policy, False)  # the engine never looks at it
    by = "policy-error" if verdict.decided_by == "policy-error" else "guardrail"
    return Explanation(policy.name, verdict.decision, by, route.deny, route.allow, verdict)


def _explain(facts: Facts, policy: Policy, reached: bool) -> Explanation:
    document = policy.document
    try:
        deny = _block(document["deny"], ("deny",), facts, True, reached) \
            if "deny" in document else None
        denied = deny is not None and deny.matched
        allow = _block(document["allow"], ("allow",), facts, False, reached and not denied) \
            if "allow" in document else None
    except Exception:  # _Failed, or facts/document of the wrong shape: fail closed
        return Explanation(policy.name, POLICY_ERROR, "policy-error", None, None)
    if deny is not None and deny.matched:
        return Explanation(policy.name, Decision(False, deny.reasons), "deny", deny, allow)
    if allow is None:
        return Explanation(policy.name, DEFAULT_DENY, "default-deny", deny, None)
    return Explanation(
        policy.name, Decision(allow.matched, allow.reasons), "allow", deny, allow
    )


def _block(value: Mapping[str, Any], path: Path, facts: Facts, negated: bool,
           reached: bool) -> Step:
    ((operator, items),) = value.items()
    item_path = (*path, operator)
    inner_negated = not negated if operator == "not" else negated
    # `not` is "none of": an `or` over the (code-swapped) items whose value is flipped.
    stop_on = operator != "and"
    children: list[Step] = []
    deciding: Step | None = None
    for index, item in enumerate(items):
        child = _item(item, (*item_path, index), facts, inner_negated,
                      reached and deciding is None)
        children.append(child)
        if deciding is None and child.matched is stop_on:
            deciding = child
    if deciding is not None:
        matched, reasons = stop_on, deciding.reasons
    else:
        matched = not stop_on
        reasons = tuple(dict.fromkeys(code for child in children for code in child.reasons))
    if operator == "not":
        matched = not matched
    return Step(format_path(item_path), operator, None, matched, reasons, reached,
                tuple(children))


def _item(value: Mapping[str, Any], path: Path, facts: Facts, negated: bool,
          reached: bool) -> Step:
    ((key, argument),) = value.items()
    if key in _OPERATORS:
        return _block(value, path, facts, negated, reached)
    where = (*path, key)
    # Several checks are an `and`: the first that fails reports; if none does, all do.
    codes: list[str] = []
    for check in CRITERIA[key].checks(argument, where):
        try:
            matched = bool(check.predicate(facts))
        except Exception:
            if reached:
                raise _Failed() from None
            return Step(format_path(where), key, argument, False, (), False, error=True)
        # A match allows unless negated.
        code = check.failed_reason if matched == negated else check.passed_reason
        if not matched:
            return Step(format_path(where), key, argument, False, (code,), reached)
        codes.append(code)
    return Step(format_path(where), key, argument, True, tuple(dict.fromkeys(codes)), reached)


_TEXT = {
    "decision": ("判定", "Decision"),
    "allowed": ("許可", "allowed"),
    "denied": ("拒否", "denied"),
    "reasons": ("理由", "Reasons"),
    "trace": ("評価の詳細", "Trace"),
    "match": ("一致", "matched"),
    "no-match": ("不一致", "not matched"),
    "not-reached": ("（未評価: 判定に使われません）", " (not reached: does not count)"),
    "error": ("（評価エラー）", " (error while evaluating)"),
    "absent": ("（なし）", " (none)"),
    "by-deny": ("deny ブロックに一致（deny が優先）", "the deny block matched (deny wins)"),
    "by-allow-yes": ("allow ブロックに一致", "the allow block matched"),
    "by-allow-no": ("allow ブロックに不一致（既定で拒否）",
                    "the allow block did not match (deny by default)"),
    "by-default-deny": ("allow ブロックがありません（既定で拒否）",
                        "the policy has no allow block (deny by default)"),
    "by-policy-error": ("評価中にエラーが起きました（フェイルクローズ）",
                        "an error occurred while evaluating (fail closed)"),
    "by-guardrail": ("セグメントのガードレールが拒否（ルートのポリシーは使われません）",
                     "the segment guardrail denied (the route's policy does not count)"),
    "guardrail": ("ガードレール", "Guardrail"),
    "route-policy": ("ルートのポリシー", "Route policy"),
}


def _t(key: str, language: str) -> str:
    ja, en = _TEXT[key]
    return ja if language == "ja" else en


def render(explanation: Explanation, language: str = "ja") -> list[str]:
    """The explanation as lines of text in `language` ("ja" or "en").

    Under a guardrail: the decision, the guardrail's verdict and trace, then the route
    policy's trace (marked not reached when the guardrail denied).
    """
    if language not in LANGUAGES:
        raise ValueError(f"unsupported language {language!r} (expected 'ja' or 'en')")
    decision = explanation.decision
    lines = [
        f"{_t('decision', language)}: {_verdict(explanation, language)}",
        f"{_t('reasons', language)}:",
    ]
    lines += [f"  - {code}: {explain_reason(code, language)}" for code in decision.reasons]
    guardrail = explanation.guardrail
    if guardrail is not None:
        lines.append(f"{_t('guardrail', language)} {guardrail.policy}: "
                     f"{_verdict(guardrail, language)}")
        _render_blocks(guardrail, language, lines, reached=True)
        lines.append(f"{_t('route-policy', language)} {explanation.policy}:")
    else:
        lines.append(f"{_t('trace', language)}:")
    _render_blocks(explanation, language, lines, reached=explanation.decided_by != "guardrail")
    return lines


def _verdict(explanation: Explanation, language: str) -> str:
    allowed = explanation.decision.allow
    by = explanation.decided_by
    if by == "allow":
        by = "allow-yes" if allowed else "allow-no"
    return f"{_t('allowed' if allowed else 'denied', language)} — {_t('by-' + by, language)}"


def _render_blocks(explanation: Explanation, language: str, lines: list[str],
                   reached: bool) -> None:
    note = "" if reached else _t("not-reached", language)
    for name, step in (("deny", explanation.deny), ("allow", explanation.allow)):
        if step is None:
            lines.append(f"  {name}{_t('absent', language)}")
            continue
        lines.append(f"  {name}:{note}")
        # Not reached as a whole: the one note above says so, not every node below it.
        _render_step(step, language, 2, lines, parent_reached=reached)


def _render_step(
    step: Step, language: str, depth: int, lines: list[str], parent_reached: bool
) -> None:
    mark = "✓" if step.matched else "✗"
    label = step.kind if step.kind in _OPERATORS else f"{step.kind}: {show(step.argument)}"
    state = _t("match" if step.matched else "no-match", language)
    codes = f" [{', '.join(step.reasons)}]" if step.reasons else ""
    # Only the first node the engine skips is marked: everything under it is skipped too.
    note = _t("error", language) if step.error else (
        _t("not-reached", language) if parent_reached and not step.reached else "")
    lines.append(f"{'  ' * depth}{mark} {label} → {state}{codes}{note}")
    for child in step.children:
        _render_step(child, language, depth + 1, lines, step.reached)


_PLAIN = re.compile(r"^[^\s\[\]{},:#&*!|>'\"%@`]+$")


def show(value: Any) -> str:
    """A YAML-like one-line rendering of an argument as written (`[staff, admins]`)."""
    if value is True or value is False:
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, str):
        return value if _PLAIN.match(value) else '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {show(item)}" for key, item in value.items()) + "}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(show(item) for item in value) + "]"
    return str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    return value


def _step_dict(step: Step) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": step.path,
        "kind": step.kind,
        "matched": step.matched,
        "reasons": list(step.reasons),
        "reached": step.reached,
    }
    if step.kind not in _OPERATORS:
        out["argument"] = _plain(step.argument)
    if step.error:
        out["error"] = True
    if step.children:
        out["children"] = [_step_dict(child) for child in step.children]
    return out
