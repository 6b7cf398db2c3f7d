"""Segment guardrails: what a 三層 segment lets through under a profile, before any route policy.

The 総務省 guideline (「地方公共団体における情報セキュリティポリシーに関するガイドライン」,
令和5年3月版 / 令和6年10月版) splits a city's network into three segments and names models
(α, α′, β, β′) for where staff terminals and systems sit. A guardrail is the floor a route's
own policy cannot go below: for one profile, segment and route mode, a policy document written
in the ordinary language from the ordinary criteria — so `explain` shows it and its reasons
come from the closed list — compiled once per configuration snapshot and put in front of each
route's policy with `engine.guard` (guardrail first; a route policy can only narrow).

Rule: a guardrail only ever closes. When a network it needs is not configured, the rule
closes its segment (`never`); it never falls back to "anyone".

`contradictions()` is the other half, used by the configuration loader: a route whose own
policy or options try to open what its guardrail keeps closed is an error naming the route,
the rule and the guideline item. The guardrail would deny those requests anyway; the error
is there so nobody believes a route is open to a terminal, a profile or a factor that the
guardrail refuses (and so a loosening written by mistake is caught in review, not in use).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sekisho.policy.criteria import CRITERIA
from sekisho.policy.criteria.mfa import SECOND_FACTORS
from sekisho.policy.engine import OPERATORS, Policy, compile_policy
from sekisho.policy.errors import Path
from sekisho.policy.facts import Facts

PROFILES = ("alpha", "alpha-prime", "beta", "beta-prime")
DEFAULT_PROFILE = "beta-prime"
LABELS = {"alpha": "α", "alpha-prime": "α′", "beta": "β", "beta-prime": "β′"}
SEGMENTS = ("internet", "lgwan", "mynumber")
MODES = ("http", "screen", "tcp")
SCREEN_OPTIONS = ("clipboard", "file_transfer", "printing", "drive")
# Models whose office terminals sit in the internet segment: there, a clipboard or a drive
# redirected from an LGWAN desktop crosses the segment boundary even inside the office.
TERMINALS_IN_INTERNET = ("beta", "beta-prime")

# マイナンバー利用事務系: the posture profile, the second factor and how fresh it must be.
# 15 minutes: long enough for one task at the counter, short enough that a terminal left
# signed in does not keep its access for the rest of the day (our figure; the guideline
# asks for strong authentication, not a number).
MYNUMBER_DEVICE_PROFILE = "managed"
MYNUMBER_FACTOR = "webauthn_uv"
MYNUMBER_AUTH_AGE = "15m"
MYNUMBER_AUTH_AGE_SECONDS = 15 * 60
# Prefixes shorter than these are not "designated terminals" but whole networks.
MIN_TERMINAL_PREFIX = {4: 16, 6: 48}
QUARANTINE = "quarantine"

GUIDELINE_JA = ("総務省「地方公共団体における情報セキュリティポリシーに関するガイドライン」"
                "(令和5年3月版 / 令和6年10月版)")
GUIDELINE_EN = ("MIC, Guidelines for Information Security Policy of Local Governments "
                "(March 2023 / October 2024 editions)")


@dataclass(frozen=True, slots=True)
class Source:
    """Where a guardrail comes from: a topic of the guideline and our requirement items."""

    ja: str
    en: str
    items: str  # municipal-requirements.md items, e.g. "1, 4"

    def requirements(self, language: str) -> str:
        """`要件 1, 4` / `requirements 1, 4` (our acceptance criteria, docs/segments.md)."""
        if language == "ja":
            return f"要件 {self.items}"
        return f"requirement{'s' if ',' in self.items else ''} {self.items}"

    def cite(self, language: str, profile: str) -> str:
        label = LABELS.get(profile, profile)
        if language == "ja":
            return f"{GUIDELINE_JA} {label} モデル「{self.ja}」、{self.requirements('ja')}"
        return f"{GUIDELINE_EN}, {label} model: {self.en}; {self.requirements('en')}"


SOURCES: Mapping[str, Source] = {
    "mynumber": Source(
        "三層の対策: マイナンバー利用事務系は他の領域と分離し、指定された端末以外から"
        "接続させない。端末は管理下に置き、強固な認証を行う",
        "three-layer separation: the My Number segment is cut off from the others and "
        "reached only from designated terminals, which are managed, with strong authentication",
        "1, 4"),
    "lgwan": Source(
        "LGWAN 接続系へ庁外から接続するときは画面転送に限り、クリップボード・ファイル転送・"
        "印刷・ドライブの転送でデータを持ち出させない",
        "the LGWAN segment is reached from outside by screen transfer only, with no data "
        "leaving through clipboard, file transfer, printing or drive redirection",
        "2, 4"),
    "internet": Source(
        "庁外からの接続 (テレワーク) では多要素認証を行う",
        "remote access (telework) requires multi-factor authentication",
        "3"),
}


@dataclass(frozen=True, slots=True)
class Networks:
    """The networks guardrails refer to, as CIDR texts (the configuration checked them)."""

    office: tuple[str, ...] = ()
    mynumber_terminals: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Guardrail:
    """One guardrail: the policy document for a (profile, segment, mode) and what it means."""

    profile: str
    segment: str
    mode: str
    redirection: bool  # screen options on (α/α′: office only; β/β′, mynumber: closed)
    document: Mapping[str, Any]
    summary_ja: str
    summary_en: str

    @property
    def name(self) -> str:
        """`beta-prime/lgwan/screen`: shown by explain and kept in the compiled policy."""
        extra = "+redirection" if self.redirection else ""
        return f"{self.profile}/{self.segment}/{self.mode}{extra}"

    @property
    def closed(self) -> bool:
        return self.document == _CLOSED

    def summary(self, language: str) -> str:
        return self.summary_ja if language == "ja" else self.summary_en

    def compile(self) -> Policy:
        return compile_policy(self.name, self.document)


_CLOSED: Mapping[str, Any] = {"allow": {"and": [{"never": True}]}}
_SIGNED_IN = {"authenticated": True}


def _cidrs(networks: Sequence[str]) -> str:
    return ", ".join(networks)


def guardrail_for(profile: str, segment: str, mode: str, networks: Networks,
                  redirection: bool = False) -> Guardrail:
    """The guardrail of a route; raises ValueError for a name outside the closed lists."""
    if profile not in PROFILES or segment not in SEGMENTS or mode not in MODES:
        raise ValueError(f"unknown profile, segment or mode: {profile}/{segment}/{mode}")
    redirection = redirection and mode == "screen"
    office = list(networks.office)

    def make(document: Mapping[str, Any], ja: str, en: str) -> Guardrail:
        return Guardrail(profile, segment, mode, redirection, document, ja, en)

    if segment == "mynumber":
        terminals = list(networks.mynumber_terminals)
        if redirection:
            return make(_CLOSED, "閉鎖: マイナンバー利用事務系の画面転送でクリップボード・"
                        "ファイル転送・印刷・ドライブの転送は使えません",
                        "closed: screen transfer into the My Number segment cannot redirect "
                        "clipboard, files, printers or drives")
        if not terminals:
            return make(_CLOSED, "閉鎖: 指定端末 (networks.mynumber_terminals) が未設定です",
                        "closed: no designated terminals (networks.mynumber_terminals) "
                        "are configured")
        return make(
            {"allow": {"and": [
                _SIGNED_IN,
                {"source_ip": terminals},
                {"device": {"enrolled": True, "profile": [MYNUMBER_DEVICE_PROFILE]}},
                # The passkey itself within 15 minutes, not the latest proof of any kind:
                # a TOTP phished a minute ago must not refresh a passkey used hours ago.
                {"mfa": {"methods": [MYNUMBER_FACTOR], "within": MYNUMBER_AUTH_AGE}},
            ]}},
            f"指定端末 ({_cidrs(terminals)}) から、プロファイル {MYNUMBER_DEVICE_PROFILE} の"
            f"登録済み端末で、パスキー ({MYNUMBER_FACTOR}) 自体による本人確認から 15 分以内",
            f"from the designated terminals ({_cidrs(terminals)}), on an enrolled device of "
            f"posture profile {MYNUMBER_DEVICE_PROFILE}, with the passkey ({MYNUMBER_FACTOR}) "
            "itself proven within the last 15 minutes")
    if segment == "lgwan":
        # TCP (`sekisho tcp`: SSH, RDP, database clients) carries data out as freely as
        # HTTP does: from outside, LGWAN is screen transfer only, so TCP is office-only too.
        if mode in ("http", "tcp") or redirection:
            if redirection and profile in TERMINALS_IN_INTERNET:
                return make(_CLOSED, f"閉鎖: {LABELS[profile]} ではクリップボード・ファイル転送"
                            "・印刷・ドライブを転送する画面転送は使えません",
                            f"closed: under {LABELS[profile]} a screen transfer that redirects "
                            "clipboard, files, printers or drives is not allowed")
            what_ja = {"http": "HTTP", "tcp": "TCP"}.get(mode, "転送ありの画面転送")
            what_en = {"http": "HTTP", "tcp": "TCP"}.get(mode, "screen transfer with redirection")
            if not office:
                return make(_CLOSED, f"閉鎖: {what_ja} は庁内からのみですが、庁内ネットワーク "
                            "(networks.office) が未設定です",
                            f"closed: {what_en} is for the office only, and no office "
                            "networks (networks.office) are configured")
            return make({"allow": {"and": [_SIGNED_IN, {"source_ip": office}]}},
                        f"{what_ja} は庁内 ({_cidrs(office)}) からのみ",
                        f"{what_en} from the office networks ({_cidrs(office)}) only")
        trusted_device: list[dict[str, Any]] = [
            {"device": {"enrolled": True}},
            {"not": [{"device": {"profile": [QUARANTINE]}}]},
            {"mfa": True},
        ]
        if not office:
            return make({"allow": {"and": [_SIGNED_IN, *trusted_device]}},
                        "画面転送は登録済み端末 (quarantine 以外) と 2 段階目の認証で"
                        " (庁内ネットワーク未設定のため、すべて庁外扱い)",
                        "screen transfer from an enrolled device (not quarantine) with a second "
                        "factor (no office networks configured: every request counts as remote)")
        return make(
            {"allow": {"and": [_SIGNED_IN, {"or": [{"source_ip": office},
                                                   {"and": trusted_device}]}]}},
            f"画面転送は庁内 ({_cidrs(office)}) から、または庁外から登録済み端末"
            " (quarantine 以外) と 2 段階目の認証で",
            f"screen transfer from the office networks ({_cidrs(office)}), or from outside "
            "with an enrolled device (not quarantine) and a second factor")
    if not office:
        return make({"allow": {"and": [_SIGNED_IN, {"mfa": True}]}},
                    "サインイン済みで 2 段階目の認証"
                    " (庁内ネットワーク未設定のため、すべて庁外扱い)",
                    "signed in with a second factor (no office networks configured: every "
                    "request counts as remote)")
    return make({"allow": {"and": [_SIGNED_IN, {"or": [{"source_ip": office}, {"mfa": True}]}]}},
                f"サインイン済み。庁内 ({_cidrs(office)}) の外からは 2 段階目の認証も",
                f"signed in; from outside the office networks ({_cidrs(office)}) a second "
                "factor too")


def describe(profile: str, networks: Networks) -> list[tuple[str, str, str]]:
    """One line per segment (segment, ja, en): the effective guardrails, for check-config."""
    lines = []
    for segment in SEGMENTS:
        http = guardrail_for(profile, segment, "http", networks)
        screen = guardrail_for(profile, segment, "screen", networks)
        redirected = guardrail_for(profile, segment, "screen", networks, redirection=True)
        tcp = guardrail_for(profile, segment, "tcp", networks)
        ja, en = http.summary_ja, http.summary_en
        if segment == "lgwan":
            ja += f"。{screen.summary_ja}。{redirected.summary_ja}。{tcp.summary_ja}"
            en += f"; {screen.summary_en}; {redirected.summary_en}; {tcp.summary_en}"
        ja += f"（{SOURCES[segment].requirements('ja')}）"
        en += f" ({SOURCES[segment].requirements('en')})"
        lines.append((segment, ja, en))
    return lines


# -- contradictions ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """A way a route can contradict its guardrail: a check-config error when it does."""

    id: str
    segment: str
    ja: str
    en: str


RULES: Mapping[str, Rule] = {rule.id: rule for rule in (
    Rule("mynumber-designated-terminals", "mynumber",
         "マイナンバー利用事務系へは指定端末 (networks.mynumber_terminals) からのみ接続できます",
         "the My Number segment is reached from the designated terminals "
         "(networks.mynumber_terminals) only"),
    Rule("mynumber-managed-device", "mynumber",
         f"マイナンバー利用事務系へはプロファイル {MYNUMBER_DEVICE_PROFILE} の登録済み端末からのみ"
         "接続できます",
         f"the My Number segment is reached from enrolled devices of posture profile "
         f"{MYNUMBER_DEVICE_PROFILE} only"),
    Rule("mynumber-passkey", "mynumber",
         f"マイナンバー利用事務系にはパスキー ({MYNUMBER_FACTOR}) による本人確認が必要です",
         f"the My Number segment needs a passkey ({MYNUMBER_FACTOR})"),
    Rule("mynumber-fresh-proof", "mynumber",
         f"マイナンバー利用事務系には {MYNUMBER_AUTH_AGE} 以内のパスキーによる本人確認が必要です",
         f"the My Number segment needs a passkey proven at most {MYNUMBER_AUTH_AGE} ago"),
    Rule("mynumber-not-public", "mynumber",
         "マイナンバー利用事務系のルートを誰にでも開くことはできません",
         "a My Number route cannot be opened to everyone"),
    Rule("mynumber-no-redirection", "mynumber",
         "マイナンバー利用事務系の画面転送でクリップボード・ファイル転送・印刷・ドライブは"
         "使えません",
         "screen transfer into the My Number segment cannot redirect clipboard, files, "
         "printers or drives"),
    Rule("mynumber-terminals-narrow", "mynumber",
         "指定端末は端末のアドレスで指定します (IPv4 は /16、IPv6 は /48 より狭い範囲)",
         "designated terminals are named by their addresses (narrower than /16 for IPv4, "
         "/48 for IPv6)"),
    Rule("lgwan-http-internal", "lgwan",
         "LGWAN 接続系の HTTP ルートは庁内 (networks.office) からのみです。庁外からは画面転送"
         " (mode: screen) を使います",
         "HTTP routes into the LGWAN segment are for the office networks (networks.office) "
         "only; from outside, use screen transfer (mode: screen)"),
    Rule("lgwan-tcp-internal", "lgwan",
         "LGWAN 接続系の TCP ルート (sekisho tcp) は庁内 (networks.office) からのみです。庁外からは"
         "画面転送 (mode: screen) を使います",
         "TCP routes (sekisho tcp) into the LGWAN segment are for the office networks "
         "(networks.office) only; from outside, use screen transfer (mode: screen)"),
    Rule("lgwan-not-public", "lgwan",
         "LGWAN 接続系のルートを誰にでも開くことはできません",
         "an LGWAN route cannot be opened to everyone"),
    Rule("lgwan-no-redirection", "lgwan",
         "β・β′ では LGWAN 接続系の画面転送でクリップボード・ファイル転送・印刷・ドライブは"
         "使えません (庁内の端末もインターネット接続系にあるため)",
         "under β and β′ screen transfer into the LGWAN segment cannot redirect clipboard, "
         "files, printers or drives (office terminals sit in the internet segment too)"),
    Rule("remote-mfa", "internet",
         "庁外からのサインインには 2 段階目の認証が必要です (mfa.require_remote: true)",
         "sign-ins from outside the office need a second factor (mfa.require_remote: true)"),
)}


@dataclass(frozen=True, slots=True)
class Finding:
    """A contradiction: the rule, where (`scope` "policy": a path in the route's policy
    document; "route": a path in the route entry; "config": a top-level path), and why."""

    rule: str
    scope: str
    path: Path
    detail_ja: str
    detail_en: str

    def message(self, profile: str, route: str = "") -> tuple[str, str]:
        """(ja, en): the route, the rule, what was written and the guideline item."""
        rule = RULES[self.rule]
        source = SOURCES[rule.segment]
        who_ja = f"ルート '{route}' ({rule.segment}) の" if route else ""
        who_en = f"route '{route}' ({rule.segment}): " if route else ""
        return (
            f"{who_ja}{self.detail_ja}はガードレール {rule.id} に反します: {rule.ja}"
            f"（{source.cite('ja', profile)}）",
            f"{who_en}{self.detail_en} contradicts guardrail {rule.id}: {rule.en} "
            f"({source.cite('en', profile)})",
        )


def contradictions(*, profile: str, segment: str, mode: str, screen: Mapping[str, bool],
                   document: Mapping[str, Any], networks: Networks) -> list[Finding]:
    """Every way this route tries to open what its guardrail keeps closed.

    Only what works towards allowing counts: criteria in the `allow` block under an even
    number of `not`. A `deny` block, or a criterion under `not`, can only narrow.
    `document` must already compile (`compile_policy`).
    """
    findings: list[Finding] = []
    on = [name for name in SCREEN_OPTIONS if screen.get(name) is True and mode == "screen"]
    if segment == "mynumber":
        findings += [Finding("mynumber-no-redirection", "route", ("screen", name),
                             f"「screen.{name}: true」", f"screen.{name}: true") for name in on]
    elif segment == "lgwan" and profile in TERMINALS_IN_INTERNET:
        findings += [Finding("lgwan-no-redirection", "route", ("screen", name),
                             f"「screen.{name}: true」", f"screen.{name}: true") for name in on]
    if segment == "internet":
        return findings
    for path, name, argument in _opening(document):
        if name == "always":
            findings.append(Finding(f"{segment}-not-public", "policy", path,
                                    "「always: true」", "always: true"))
        elif name == "source_ip" and segment == "mynumber":
            findings += _outside(path, argument, networks.mynumber_terminals,
                                 rule="mynumber-designated-terminals",
                                 what=("指定端末", "designated terminals"))
        elif name == "source_ip" and mode == "tcp":
            findings += _outside(path, argument, networks.office, rule="lgwan-tcp-internal",
                                 what=("庁内ネットワーク", "office networks"))
        elif name == "source_ip" and mode == "http":
            findings += _outside(path, argument, networks.office, rule="lgwan-http-internal",
                                 what=("庁内ネットワーク", "office networks"))
        elif segment == "mynumber":
            findings += _mynumber_criterion(path, name, argument)
    return findings


def terminal_findings(networks: Networks) -> list[Finding]:
    """Designated terminals written as whole networks (`0.0.0.0/0`, `10.0.0.0/8` …)."""
    findings = []
    for index, text in enumerate(networks.mynumber_terminals):
        network = _unmapped(ipaddress.ip_network(text, strict=False))
        if network.prefixlen < MIN_TERMINAL_PREFIX[network.version]:
            findings.append(Finding("mynumber-terminals-narrow", "config",
                                    ("networks", "mynumber_terminals", index),
                                    f"範囲 {text} ", f"the range {text}"))
    return findings


def _opening(document: Mapping[str, Any]) -> Iterator[tuple[Path, str, Any]]:
    """(path, criterion, argument) for each criterion that works towards allowing."""
    allow = document.get("allow")
    if isinstance(allow, Mapping):
        yield from _walk(allow, ("allow",), negated=False)


def _walk(block: Mapping[str, Any], path: Path, negated: bool) -> Iterator[tuple[Path, str, Any]]:
    ((operator, items),) = block.items()
    inner = not negated if operator == "not" else negated
    for index, item in enumerate(items):
        ((key, argument),) = item.items()
        where: Path = (*path, operator, index)
        if key in OPERATORS:
            yield from _walk(item, where, inner)
        elif not inner:
            yield (*where, key), key, argument


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _unmapped(network: _Network) -> _Network:
    """`::ffff:10.0.0.0/120` is the IPv4 range 10.0.0.0/24 (as the source_ip criterion reads it)."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        start = network.network_address.ipv4_mapped
        if start is not None:
            return ipaddress.IPv4Network((start, network.prefixlen - 96))
    return network


def _covered(network: _Network, allowed: Sequence[str]) -> bool:
    """Is every address of `network` in the union of `allowed`?"""
    spans: list[tuple[int, int]] = []
    for text in allowed:
        other = _unmapped(ipaddress.ip_network(text, strict=False))
        if other.version == network.version:
            spans.append((int(other.network_address), int(other.broadcast_address)))
    start, end = int(network.network_address), int(network.broadcast_address)
    for low, high in sorted(spans):
        if low > start:
            return False
        if high >= start:
            start = high + 1
            if start > end:
                return True
    return False


def _outside(path: Path, argument: Any, allowed: Sequence[str], *, rule: str,
             what: tuple[str, str]) -> list[Finding]:
    what_ja, what_en = what
    items = [(argument, path)] if isinstance(argument, str) else \
        [(text, (*path, index)) for index, text in enumerate(argument)]
    findings = []
    for text, where in items:
        network = _unmapped(ipaddress.ip_network(text, strict=False))
        if not _covered(network, allowed):
            findings.append(Finding(rule, "policy", where, f"{what_ja}の外の範囲 {text} の許可",
                                    f"allowing {text}, outside the {what_en},"))
    return findings


def _probe_facts(**overrides: Any) -> Facts:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    values: dict[str, Any] = dict(
        authenticated=True, user="probe", email="", groups=frozenset(),
        source_ip=ipaddress.ip_address("192.0.2.1"), method="GET", path="/", host="probe",
        route="probe", segment="mynumber", now=now, auth_time=now)
    values.update(overrides)
    return Facts(**values)


def _mynumber_criterion(path: Path, name: str, argument: Any) -> list[Finding]:
    """Device profiles, second factors and proof ages weaker than the guardrail's."""
    if name == "device" and "profile" in argument:
        profiles = [argument["profile"]] if isinstance(argument["profile"], str) \
            else list(argument["profile"])
        others = [p for p in profiles if p != MYNUMBER_DEVICE_PROFILE]
        if others:
            shown = ", ".join(others)
            return [Finding("mynumber-managed-device", "policy", (*path, "profile"),
                            f"プロファイル {shown} の許可", f"allowing profile {shown}")]
    predicate = CRITERIA[name].predicate(argument, path) if name in ("mfa", "auth_age") \
        else None
    now = datetime(2026, 1, 1, tzinfo=UTC)
    older = now - timedelta(seconds=MYNUMBER_AUTH_AGE_SECONDS + 1)
    if name == "mfa" and predicate is not None:
        # Asked of the criterion itself, not of its argument's spelling: `true`, `totp`,
        # `webauthn` (a passkey without user verification) … all accept a weaker proof.
        weaker = sorted(m for m in SECOND_FACTORS - {MYNUMBER_FACTOR} if predicate(
            _probe_facts(auth_methods=frozenset({"pwd", m}), proofs={"pwd": now, m: now})))
        if weaker:
            shown = ", ".join(weaker)
            return [Finding("mynumber-passkey", "policy", path,
                            f"2 段階目の方式 {shown} の許可",
                            f"accepting the second factor {shown}")]
        # The timed form (`{methods, within}`) measures the passkey's own age; the list
        # form says nothing about time, so only the former can accept an older proof.
        stale = {"pwd": older, MYNUMBER_FACTOR: older}
        if isinstance(argument, Mapping) and predicate(_probe_facts(
                auth_methods=frozenset(stale), auth_time=older, proofs=stale)):
            within = argument.get("within")
            return [Finding("mynumber-fresh-proof", "policy", (*path, "within"),
                            f"{within} 前のパスキーの許可",
                            f"accepting a passkey proven {within} ago")]
    if name == "auth_age" and predicate is not None and \
            predicate(_probe_facts(now=now, auth_time=older)):
        return [Finding("mynumber-fresh-proof", "policy", path, f"{argument} 前の本人確認の許可",
                        f"accepting a proof of identity {argument} old")]
    return []
