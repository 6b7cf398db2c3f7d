"""`device: {enrolled: true, id: ID | [IDS], profile: P | [PS]}` — an enrolled device.

The gateway fills the device facts from a client certificate that chained to the internal
CA, and marks the device enrolled only while the registry lists it as active with that very
certificate (a suspended or revoked device, or an older certificate of it, is not enrolled).

A device certificate vouches for the device, not for whoever uses it: when both the device's
user and the signed-in user are known they must be the same person. Otherwise a device
certificate stolen from (or lent by) one employee would lend its trust to another account —
the confused-deputy attack on device trust.

`profile` lists the posture profiles accepted (docs/devices.md). The gateway computes the
profile from the device's latest fresh signed report; a device failing its profile's checks
already carries the lower class (or `quarantine`), so `profile: managed` never admits it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sekisho.policy.criteria._base import (
    Criterion,
    Predicate,
    expect,
    string_list,
    timeless,
    type_name,
)
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts

KEYS = ("enrolled", "id", "profile")


def _compile(argument: Any, path: Path) -> Predicate:
    if not isinstance(argument, Mapping) or not argument:
        raise expect(
            path,
            f"expected a mapping such as {{enrolled: true}} or {{id: [dev-…]}}, got "
            f"{type_name(argument)}",
            f"{{enrolled: true}} や {{id: [dev-…]}} のようなマッピングを指定してください"
            f"（指定値の型: {type_name(argument)}）",
        )
    for key in argument:
        if key not in KEYS:
            raise expect(
                (*path, str(key)),
                f"unknown key {key!r} (expected: {', '.join(KEYS)})",
                f"不明なキー {key!r} です（{', '.join(KEYS)} のいずれか）",
            )
    if "enrolled" in argument and argument["enrolled"] is not True:
        # `enrolled: false` would match every device that is NOT trusted: never what an
        # allow rule means, and in a deny rule `not: [{device: {enrolled: true}}]` says it.
        raise expect(
            (*path, "enrolled"),
            f"expected true (write 'enrolled: true'), got {argument['enrolled']!r}",
            f"true を指定してください（'enrolled: true'）。指定値: {argument['enrolled']!r}",
        )
    ids: frozenset[str] | None = None
    if "id" in argument:
        ids = frozenset(string_list(argument["id"], (*path, "id"), "a device id", "端末 ID"))
    profiles: frozenset[str] | None = None
    if "profile" in argument:
        profiles = frozenset(string_list(argument["profile"], (*path, "profile"),
                                         "a posture profile", "プロファイル名"))

    def device(facts: Facts) -> bool:
        if facts.device_enrolled is not True or not facts.device_id:
            return False
        if ids is not None and facts.device_id not in ids:
            return False
        if profiles is not None and facts.device_profile not in profiles:
            return False
        # A stolen device certificate must not vouch for another account (see module doc).
        return not (facts.authenticated and facts.user and facts.device_user
                    and facts.device_user != facts.user)

    return device


CRITERION = Criterion(
    name="device",
    passed_reason="device-authorized",
    failed_reason="device-unauthorized",
    summary_ja="登録済みで有効な端末 (id を指定したときはその端末、profile を指定したときは"
               "そのプロファイルの端末) から、その端末の利用者本人が使っていれば一致します。",
    summary_en="Matches a request from an enrolled, active device (one listed, with id; of a "
               "listed posture profile, with profile) used by the user it is enrolled to.",
    compile=_compile,
    reads_clock=timeless,
)
