"""`sekisho policy explain` and `sekisho policy test`: why a request is allowed or denied.

explain decides one hypothetical request against a configuration and prints the route, the
decision, its reasons and the whole trace — the route's segment guardrail first, then its
policy; test runs a YAML table of such requests with
expected decisions, for the CI of a city's configuration repository. Exit codes: explain 0
allowed / 1 denied; test 0 all passed / 1 a case failed; both 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sekisho.cli._common import add_config_option, open_engine
from sekisho.cli._probe import (
    FIELDS,
    BadInput,
    DeviceFacts,
    DeviceLookup,
    Result,
    decide,
    parse_probe,
    registry_device,
)
from sekisho.policy import REASONS, Facts, explain_reason
from sekisho.policy.explain import render
from sekisho.runtime import Runtime, build_runtime

_LABELS = {
    "route": ("ルート", "Route"),
    "segment": ("セグメント", "Segment"),
    "policy": ("ポリシー", "Policy"),
    "facts": ("事実", "Facts"),
    "anonymous": ("未サインイン", "not signed in"),
    "mode": ("モード", "Mode"),
}


def _label(key: str, language: str) -> str:
    ja, en = _LABELS[key]
    return ja if language == "ja" else en


def _runtime(args: argparse.Namespace) -> Runtime | None:
    from sekisho.config import load_config

    if not args.config:
        print("sekisho: --config が必要です / --config is required", file=sys.stderr)
        return None
    return build_runtime(load_config(args.config))  # ConfigError: one clear line, exit 2


def _facts_line(result: Result, language: str) -> str:
    facts = result.facts
    assert facts is not None
    groups = ", ".join(sorted(facts.groups))
    who = (f"user={facts.user} groups=[{groups}] email={facts.email or '-'}"
           f" auth={'+'.join(sorted(facts.auth_methods))}{_ages(facts)}"
           if facts.authenticated else _label("anonymous", language))
    return (f"{_label('facts', language)}: {who} ip={facts.source_ip} method={facts.method} "
            f"at={facts.now.isoformat(timespec='seconds')} device={_device(result.device)}")


def _ages(facts: Facts) -> str:
    """` proven=pwd@3600s,webauthn_uv@300s` when the methods were proven at different times
    (nothing when all were proven together, as at a plain sign-in)."""
    if len(set(facts.proofs.values())) <= 1:
        return ""
    ages = ",".join(f"{name}@{round((facts.now - when).total_seconds())}s"
                    for name, when in sorted(facts.proofs.items()))
    return f" proven={ages}"


def _device(device: DeviceFacts | None) -> str:
    if device is None:
        return "-"
    if not device.enrolled:
        return f"{device.device_id}(not-enrolled:{device.status or '-'})"
    return f"{device.device_id}(enrolled,user={device.user or '-'},profile={device.profile})"


def _profiles(runtime: Runtime) -> tuple[str, ...]:
    return tuple(profile.name for profile in runtime.config.devices.profiles)


@contextmanager
def _registry(args: argparse.Namespace, runtime: Runtime, wanted: bool
              ) -> Iterator[DeviceLookup | None]:
    """The device registry (the configured database), opened only when a probe names one."""
    if not wanted:
        yield None
        return
    engine = open_engine(args)
    try:
        def lookup(device_id: str, now: datetime) -> DeviceFacts:
            return registry_device(engine, runtime, device_id, now)

        yield lookup
    finally:
        engine.dispose()


def _explain(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    if runtime is None:
        return 2
    language = args.lang or runtime.config.default_language
    if args.route is not None:
        route = next((r for r in runtime.config.routes if r.id == args.route), None)
        if route is None:
            known = ", ".join(r.id for r in runtime.config.routes) or "-"
            print(f"sekisho: --route: ルート '{args.route}' はありません（あるもの: {known}）/ "
                  f"no route '{args.route}' (defined: {known})", file=sys.stderr)
            return 2
        args.url = f"https://{route.host}{route.path_prefix}"
    fields = {name: getattr(args, name) for name in FIELDS}
    try:
        probe = parse_probe(fields, runtime.config.timezone, _profiles(runtime))
        with _registry(args, runtime, bool(probe.device)) as devices:
            result = decide(runtime, probe, devices)
    except BadInput as exc:
        print(f"sekisho: --{exc.field.replace('_', '-')}: {exc.ja} / {exc.en}", file=sys.stderr)
        return 2
    decision = result.decision
    route = result.route
    assert route is not None
    if args.json:
        out: dict[str, Any] = {
            "url": args.url, "host": result.host, "path": result.path, "route": route.id,
            "segment": route.segment, "mode": route.mode, "policy": route.policy,
            "device": None if result.device is None else {
                "id": result.device.device_id, "enrolled": result.device.enrolled,
                "user": result.device.user, "profile": result.device.profile,
                "status": result.device.status},
        }
        if result.explanation is not None:
            out.update(result.explanation.to_dict())
        else:
            out.update({"allow": False, "reasons": [], "refused": result.refusal_en})
        out["explained"] = [
            {"code": code, "text": explain_reason(code, language)} for code in decision.reasons
        ]
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0 if decision.allow else 1
    title = f" ({route.title})" if route.title else ""
    print(f"URL: {args.url} → {result.host} {result.path}")
    mode = f"  {_label('mode', language)}: {route.mode}" if route.mode != "http" else ""
    print(f"{_label('route', language)}: {route.id}{title}  "
          f"{_label('segment', language)}: {route.segment}{mode}  "
          f"{_label('policy', language)}: {route.policy}")
    if result.explanation is None:
        print(result.refusal_ja if language == "ja" else result.refusal_en)
        return 1
    print(_facts_line(result, language))
    print("\n".join(render(result.explanation, language)))
    return 0 if decision.allow else 1


_CASE_KEYS = frozenset((*FIELDS, "name", "expect", "reasons"))


def _load_cases(file: str, timezone: str, profiles: tuple[str, ...]
                ) -> tuple[list[dict[str, Any]], list[str]]:
    """The cases of a test file, or every problem in it (each naming index and field)."""
    from sekisho.config.yamlfile import YamlRefused, decode, read_yaml

    try:
        data, lines, problems = read_yaml(decode(Path(file).read_bytes()))
    except OSError as exc:
        return [], [f"{file}: ファイルを読めません / cannot read the file: {exc.strerror}"]
    except YamlRefused as exc:
        return [], [exc.problem.render(file)]
    errors = [problem.render(file) for problem in problems]
    if not isinstance(data, list) or not data:
        return [], [*errors, f"{file}: テストケースの空でないリストが必要です / "
                             "expected a non-empty list of test cases"]
    cases: list[dict[str, Any]] = []
    for index, case in enumerate(data):
        label = case.get("name") if isinstance(case, Mapping) else None
        name = f" ({label})" if isinstance(label, str) else ""

        def problem(field: str, ja: str, en: str, index: int = index, name: str = name) -> None:
            line = lines.line((index, field) if field else (index,))
            where = f"[{index}]{name}" + (f".{field}" if field else "")
            errors.append(f"{file}:{line}: {where}: {ja} / {en}")

        if not isinstance(case, Mapping):
            problem("", "マッピングを指定してください", "expected a mapping")
            continue
        for key in sorted(set(case) - _CASE_KEYS):
            known = ", ".join(sorted(_CASE_KEYS))
            problem(key, "不明なキーです", f"unknown key (expected: {known})")
        if not isinstance(case.get("name"), str) or not case["name"].strip():
            problem("name", "空でない名前が必要です", "expected a non-empty name")
        if case.get("expect") not in ("allow", "deny"):
            problem("expect", "allow または deny を指定してください", "expected allow or deny")
        reasons = case.get("reasons")
        if reasons is not None and (not isinstance(reasons, list) or not all(
                isinstance(code, str) and code in REASONS for code in reasons)):
            problem("reasons", "理由コード（docs/policy.md の一覧）のリストを指定してください",
                    "expected a list of reason codes (see docs/policy.md)")
        try:
            parse_probe(case, timezone, profiles)
        except BadInput as exc:
            problem(exc.field, exc.ja, exc.en)
        cases.append(dict(case))
    return cases, errors


def _test(args: argparse.Namespace) -> int:
    runtime = _runtime(args)
    if runtime is None:
        return 2
    language = args.lang or runtime.config.default_language
    cases, errors = _load_cases(args.file, runtime.config.timezone, _profiles(runtime))
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 2
    with _registry(args, runtime, any(case.get("device") for case in cases)) as devices:
        return _run_cases(runtime, cases, devices, language)


def _run_cases(runtime: Runtime, cases: list[dict[str, Any]], devices: DeviceLookup | None,
               language: str) -> int:
    passed = failed = 0
    for index, case in enumerate(cases):
        name = case["name"]
        try:
            result = decide(runtime, parse_probe(case, runtime.config.timezone), devices)
        except BadInput as exc:
            failed += 1
            print(f"✗ {name}: [{index}].{exc.field}: {exc.ja} / {exc.en}")
            continue
        decision = result.decision
        got = "allow" if decision.allow else "deny"
        expected_reasons = case.get("reasons")
        ok = got == case["expect"] and (
            expected_reasons is None or set(expected_reasons) == set(decision.reasons))
        if ok:
            passed += 1
            print(f"✓ {name}")
            continue
        failed += 1
        want = case["expect"] + (f" [{', '.join(expected_reasons)}]" if expected_reasons
                                 is not None else "")
        route = result.route.id if result.route is not None else "-"
        print(f"✗ {name}: 期待 / expected {want}, 結果 / got {got} "
              f"[{', '.join(decision.reasons)}] (route {route}, path {result.path})")
        for code in decision.reasons:
            print(f"    - {code}: {explain_reason(code, language)}")
        if result.explanation is None:
            print(f"    - {result.refusal_ja if language == 'ja' else result.refusal_en}")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = subparsers.add_parser(
        "policy", help="ポリシーの判定理由と検査 / explain and test policy decisions")
    actions = group.add_subparsers(dest="policy_command", metavar="ACTION", required=True)

    explain_help = ("1 件のリクエストの判定とその理由を表示する / "
                    "show the decision for one request and why")
    explain = actions.add_parser("explain", help=explain_help, description=explain_help)
    add_config_option(explain)
    target = explain.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="https://host/path")
    target.add_argument("--route", default=None, metavar="ID",
                        help="ルート id（そのホストとパスの先頭への GET）/ a route id (a request "
                             "to its host and path prefix)")
    explain.add_argument("--method", default=None, help="HTTP メソッド / method (GET)")
    explain.add_argument("--user", default=None, help="利用者名（省略時は未サインイン）/ "
                         "user name (omit for a request that is not signed in)")
    explain.add_argument("--group", dest="groups", action="append", default=None,
                         help="所属グループ（複数可）/ a group (repeatable)")
    explain.add_argument("--email", default=None, help="メールアドレス / e-mail")
    explain.add_argument("--ip", default=None,
                         help="接続元 IP / source IP (default 192.0.2.1: the internet)")
    explain.add_argument("--at", "--time", dest="at", default=None,
                         help="日時 ISO 8601 / time, e.g. 2026-12-01T09:00+09:00 (default: now)")
    explain.add_argument("--mfa", action="append", default=None, metavar="METHOD[@SECONDS]",
                         help="済ませた 2 段階目 (totp, webauthn_uv …)。@秒数 でその方式を何秒前に"
                              "済ませたか（省略時はサインインと同時）/ a second factor proven "
                              "(totp, webauthn_uv …); @SECONDS: how long ago it was proven "
                              "(default: with the sign-in), e.g. webauthn_uv@300")
    explain.add_argument("--auth-age", dest="auth_age", type=int, default=None,
                         help="サインイン（1 段階目）からの秒数 / seconds since the sign-in, "
                              "the primary proof (0)")
    explain.add_argument("--idp", default=None, help="IdP の id / identity provider id")
    explain.add_argument("--device", default=None, metavar="ID",
                         help="端末台帳の端末 ID（登録状態・利用者・プロファイルを台帳から）/ a "
                              "device id from the registry (its standing, user and profile)")
    explain.add_argument("--device-profile", dest="device_profile", default=None, metavar="P",
                         help="仮の登録済み端末のプロファイル（データベース不要）/ a hypothetical "
                              "enrolled device of this posture profile (no database)")
    explain.add_argument("--lang", choices=("ja", "en"), default=None,
                         help="表示言語 / language (default: the config's)")
    explain.add_argument("--json", action="store_true", help="JSON で出力 / print JSON")
    explain.set_defaults(handler=_explain)

    test_help = ("期待する判定の表 (YAML) を設定に対して検査する / "
                 "check a YAML table of expected decisions against the configuration")
    test = actions.add_parser("test", help=test_help, description=test_help)
    add_config_option(test)
    test.add_argument("file", metavar="TESTFILE", help="テストケースの YAML / test cases (YAML)")
    test.add_argument("--lang", choices=("ja", "en"), default=None,
                      help="表示言語 / language (default: the config's)")
    test.set_defaults(handler=_test)
