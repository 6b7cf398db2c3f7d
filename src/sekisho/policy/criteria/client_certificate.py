"""`client_certificate: {issuer: NAME, san: NAME | [NAMES]}` — the verified client certificate.

The gateway only fills these facts from a certificate that chained to the internal CA and
belongs to a device the registry lists as active with that certificate, so a suspended or
revoked certificate matches nothing. `issuer` is compared exactly with the RFC 4514 string
(`sekisho ca show` prints it); `san` matches when the certificate carries at least one of
the listed subject alternative names (URIs such as `urn:sekisho:inventory:PC-0042`, DNS
names, e-mail addresses, IP addresses, written as plain text). Exact comparison only: a
prefix or pattern here would let `urn:sekisho:inventory:PC-0042x` pass for `PC-0042`.
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

KEYS = ("issuer", "san")


def _compile(argument: Any, path: Path) -> Predicate:
    if not isinstance(argument, Mapping) or not argument:
        raise expect(
            path,
            f"expected a mapping with issuer and/or san, got {type_name(argument)}",
            f"issuer と san の一方または両方を持つマッピングを指定してください"
            f"（指定値の型: {type_name(argument)}）",
        )
    for key in argument:
        if key not in KEYS:
            raise expect(
                (*path, str(key)),
                f"unknown key {key!r} (expected: {', '.join(KEYS)})",
                f"不明なキー {key!r} です（{', '.join(KEYS)} のいずれか）",
            )
    issuer: str | None = None
    if "issuer" in argument:
        raw = argument["issuer"]
        if not isinstance(raw, str) or not raw.strip() or raw != raw.strip():
            raise expect(
                (*path, "issuer"),
                f"expected the issuer name as one string like 'CN=…,O=…', got {raw!r}",
                f"発行者名を 'CN=…,O=…' のような 1 つの文字列で指定してください。指定値: {raw!r}",
            )
        issuer = raw
    sans: frozenset[str] | None = None
    if "san" in argument:
        sans = frozenset(string_list(argument["san"], (*path, "san"),
                                     "a subject alternative name", "別名 (SAN)"))

    def client_certificate(facts: Facts) -> bool:
        if not facts.client_certificate_issuer:
            return False  # no verified certificate in good standing
        if issuer is not None and facts.client_certificate_issuer != issuer:
            return False
        return sans is None or not sans.isdisjoint(facts.client_certificate_sans)

    return client_certificate


CRITERION = Criterion(
    name="client_certificate",
    passed_reason="client-certificate-authorized",
    failed_reason="client-certificate-unauthorized",
    summary_ja="検証済みのクライアント証明書の発行者が一致し、別名 (SAN) のいずれかを含めば"
               "一致します。",
    summary_en="Matches a verified client certificate with the given issuer and any of the "
               "given subject alternative names.",
    compile=_compile,
    reads_clock=timeless,
)
