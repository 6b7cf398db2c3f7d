"""What a criterion is, and the argument checks that every criterion module shares.

A criterion turns its YAML argument into a `Predicate` once, at compile time (frozensets,
merged address ranges, lower-cased names), so evaluation is a few attribute reads and one
set lookup. Argument errors raise `PolicyError` with the path of the offending item and a
sentence saying what is expected, in Japanese and English.

An argument that can fail in more than one way compiles to several `Check`s instead, each
with its own codes, tested in order (`mfa: {methods, within}`: never proven is
`mfa-required`, proven too long ago `auth-too-old`, so the gateway still knows a step-up
cures it). The engine and `explain` treat them as an `and` of those checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sekisho.policy.errors import Path, PolicyError
from sekisho.policy.facts import Facts

Predicate = Callable[[Facts], bool]


@dataclass(frozen=True, slots=True)
class Check:
    """One test of a criterion argument that compiles to several, with the codes it reports."""

    predicate: Predicate
    passed_reason: str
    failed_reason: str


Compiled = Predicate | tuple[Check, ...]


def on_the_clock(argument: Any) -> bool:
    """`Criterion.reads_clock` of a criterion that did not say: assume it reads the time."""
    return True


def timeless(argument: Any) -> bool:
    """`Criterion.reads_clock` of a criterion that never looks at the time of the request."""
    return False


@dataclass(frozen=True, slots=True)
class Criterion:
    """A named test over `Facts`, with the reason codes it reports.

    `passed_reason` is reported when the criterion's outcome works towards allowing the
    request, `failed_reason` when it works towards denying it (see docs/policy.md).
    """

    name: str
    passed_reason: str
    failed_reason: str
    summary_ja: str
    summary_en: str
    compile: Callable[[Any, Path], Compiled]
    # Every code the criterion can report (`passed_reason`, `failed_reason` and its checks').
    extra_reasons: tuple[str, ...] = ()
    # Whether, with this argument, the outcome can change with the time of the request alone
    # (`Facts.now`: hours, auth age, proof age). The gateway reuses the decisions of policies
    # whose criteria all say no (`Policy.clock`, gateway.decisions); a criterion that does not
    # say is taken to read the clock, so forgetting it costs speed, never correctness.
    reads_clock: Callable[[Any], bool] = on_the_clock

    def checks(self, argument: Any, path: Path) -> tuple[Check, ...]:
        """The argument compiled to its checks, in the order they are tested (usually one)."""
        compiled = self.compile(argument, path)
        if isinstance(compiled, tuple):
            return compiled
        return (Check(compiled, self.passed_reason, self.failed_reason),)

    def predicate(self, argument: Any, path: Path) -> Predicate:
        """The argument compiled to one yes/no test (all of its checks)."""
        checks = self.checks(argument, path)
        if len(checks) == 1:
            return checks[0].predicate
        tests = tuple(check.predicate for check in checks)
        return lambda facts: all(test(facts) for test in tests)

    @property
    def reasons(self) -> tuple[str, ...]:
        return (self.passed_reason, self.failed_reason, *self.extra_reasons)


def expect(path: Path, en: str, ja: str) -> PolicyError:
    """Build the error for an argument that is not what the criterion expects."""
    return PolicyError(path, en, ja)


_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h)?\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, None: 1}


def duration_seconds(argument: Any, path: Path) -> int:
    """Whole seconds from `900` or a duration like `"15m"` (s, m, h); more than zero."""
    if isinstance(argument, int) and not isinstance(argument, bool):
        seconds = argument
    elif isinstance(argument, str) and (match := _DURATION.match(argument)):
        seconds = int(match.group(1)) * _UNIT[match.group(2)]
    else:
        raise expect(
            path,
            f"expected a number of seconds or a duration like '15m', got {argument!r}",
            f"秒数、または '15m' のような時間を指定してください。指定値: {argument!r}",
        )
    if seconds <= 0:
        raise expect(path, f"expected a duration longer than zero, got {argument!r}",
                     f"0 より長い時間を指定してください。指定値: {argument!r}")
    return seconds


def is_list(value: object) -> bool:
    """A YAML sequence (strings and mappings are not lists here)."""
    return isinstance(value, list | tuple)


def true_only(name: str) -> Callable[[Any, Path], None]:
    """Check for criteria whose only meaningful argument is `true` (`always: true`)."""

    def check(argument: Any, path: Path) -> None:
        if argument is not True:
            raise expect(
                path,
                f"expected true (write '{name}: true'), got {argument!r}",
                f"true を指定してください（'{name}: true'）。指定値: {argument!r}",
            )

    return check


def string_list(
    argument: Any,
    path: Path,
    what_en: str,
    what_ja: str,
    check: Callable[[str, Path], str] | None = None,
) -> list[str]:
    """Accept one non-empty string or a non-empty list of them; `check` may normalise each.

    An empty list is refused: in an allow block it would silently deny everyone and in a
    deny block silently do nothing, and neither is what anybody writes on purpose.
    """
    if isinstance(argument, str):
        items: list[tuple[Any, Path]] = [(argument, path)]
    elif is_list(argument):
        if not argument:
            raise expect(
                path,
                f"expected {what_en} or a non-empty list of them, got an empty list",
                f"{what_ja}、またはその空でないリストを指定してください（空のリストです）",
            )
        items = [(item, (*path, index)) for index, item in enumerate(argument)]
    else:
        raise expect(
            path,
            f"expected {what_en} or a list of them, got {type_name(argument)}",
            f"{what_ja}、またはそのリストを指定してください（指定値の型: {type_name(argument)}）",
        )
    out: list[str] = []
    for item, item_path in items:
        if not isinstance(item, str) or not item.strip():
            raise expect(
                item_path,
                f"expected {what_en} (a non-empty string), got {item!r}",
                f"{what_ja}（空でない文字列）を指定してください。指定値: {item!r}",
            )
        if item != item.strip():
            raise expect(
                item_path,
                f"expected {what_en} without surrounding spaces, got {item!r}",
                f"前後に空白を含まない{what_ja}を指定してください。指定値: {item!r}",
            )
        out.append(check(item, item_path) if check is not None else item)
    return out


def type_name(value: object) -> str:
    """Name a YAML value's type the way an administrator would (mapping, list, number …)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if is_list(value):
        return "a list"
    if value is None:
        return "nothing (null)"
    return type(value).__name__
