"""Check a proposed configuration text exactly as a reload would, and say everything about it.

The rule: the console may apply only what `sekisho check-config` and `sekisho policy test`
would pass, so this module runs the same loader (`parse_config`: YAML, schema, secrets,
guardrail contradictions, policy compilation), builds the same runtime snapshot the reload
builds, and runs the installation's policy tests against it. Two checks are stricter than
the CLI, because text typed into a browser lands in the audit log, the history and every
auditor's screen: a secret must be a reference (`env:` / `file:`), never the value itself,
and an existing file's inline secrets are shown redacted (`redact`).

Policy tests live next to the configuration: `/etc/sekisho/sekisho.yaml` is tested by
`/etc/sekisho/sekisho.tests.yaml` (the `sekisho policy test` format), when that file exists.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sekisho.config.model import Config
from sekisho.config.problems import InvalidConfig, Problem, format_path
from sekisho.errors import ConfigError
from sekisho.runtime import Runtime

TESTS_SUFFIX = ".tests.yaml"
DIFF_MAX = 256 * 1024  # characters of diff in an answer
REDACTED = "<秘密のため非表示 / redacted>"
# storage.url is a secret field, but "sqlite:///var/sekisho.db" carries no credential.
_CREDENTIAL_URL = re.compile(r"://[^/\s]*@")


def sha256(data: str | bytes) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def policy_tests_file(config_path: str | Path) -> Path:
    """The policy tests of a configuration file: same folder, `<stem>.tests.yaml`."""
    path = Path(config_path)
    return path.with_name(path.stem + TESTS_SUFFIX)


@dataclass
class Outcome:
    """What a check found; `ok` only when there is no error and every policy test passed."""

    sha256: str
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    guardrails: list[str] = field(default_factory=list)
    tests: dict[str, Any] = field(default_factory=lambda: {
        "file": None, "passed": 0, "failed": []})
    diff: str = ""
    diff_truncated: bool = False
    restart_needed: list[str] = field(default_factory=list)
    config: Config | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and not self.tests["failed"] and self.config is not None

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "sha256": self.sha256, "errors": self.errors,
                "warnings": self.warnings, "guardrails": self.guardrails, "tests": self.tests,
                "diff": self.diff, "diff_truncated": self.diff_truncated,
                "restart_needed": self.restart_needed}


def _error(problem: Problem) -> dict[str, Any]:
    return {"line": problem.line, "field": format_path(problem.path) if problem.path else "",
            "message_ja": problem.ja, "message_en": problem.en}


def _inline_secrets(text: str) -> Iterator[tuple[Problem, str]]:
    """Secret fields written as values rather than `env:` / `file:` references."""
    from sekisho.config.reference import secret_paths
    from sekisho.config.secrets import _matches
    from sekisho.config.yamlfile import YamlRefused, read_yaml

    try:
        data, lines, _ = read_yaml(text)
    except YamlRefused:
        return  # the loader reports it
    for pattern in secret_paths():
        for path, value in _matches(data, pattern, ()):
            if not isinstance(value, str) or value.startswith(("env:", "file:")):
                continue
            if path == ("storage", "url") and not _CREDENTIAL_URL.search(value):
                continue
            yield Problem(
                lines.line(path), path,
                "秘密の値は書けません。env:NAME または file:/path で参照してください（コンソールで"
                "入力した値は監査ログと履歴に残るため）",
                "a secret cannot be written as a value here: refer to it with env:NAME or "
                "file:/path (text edited in the console is kept in the audit log and history)",
            ), value


def redact(text: str) -> tuple[str | None, list[str]]:
    """`text` with inline secret values hidden, and the fields hidden; None when a value
    cannot be located on its own line (e.g. a block scalar): then nothing is shown."""
    lines = text.splitlines(keepends=True)
    hidden: list[str] = []
    for problem, value in _inline_secrets(text):
        index = problem.line - 1
        if not value or "\n" in value or not 0 <= index < len(lines) or value not in lines[index]:
            return None, [format_path(problem.path)]
        lines[index] = lines[index].replace(value, REDACTED)
        hidden.append(format_path(problem.path))
    return "".join(lines), hidden


def unified_diff(current: str, proposed: str, name: str) -> tuple[str, bool]:
    """current → proposed, with the current file's inline secrets redacted; capped."""
    shown, _ = redact(current)
    before = shown if shown is not None else ""
    text = "".join(difflib.unified_diff(
        before.splitlines(keepends=True), proposed.splitlines(keepends=True),
        fromfile=f"{name} (現在 / current)", tofile=f"{name} (変更後 / proposed)"))
    if len(text) > DIFF_MAX:
        return text[:DIFF_MAX], True
    return text, False


def check_text(text: str, *, path: str, current_text: str, current: Config,
               engine: Any = None) -> Outcome:
    """Validate `text` as the configuration at `path` would be on reload (blocking: run it
    in a thread). Never raises for a bad text: every problem is in the outcome."""
    from sekisho.app import _restart_needed
    from sekisho.cli.config import guardrail_lines
    from sekisho.config.loader import parse_config
    from sekisho.config.yamlfile import YamlRefused, decode
    from sekisho.runtime import build_runtime

    raw = text.encode("utf-8")
    outcome = Outcome(sha256=sha256(raw))
    outcome.diff, outcome.diff_truncated = unified_diff(current_text, text, Path(path).name)
    try:
        decoded = decode(raw)
        config = parse_config(decoded, path, base_dir=Path(path).resolve().parent,
                              digest=outcome.sha256)
    except YamlRefused as exc:
        outcome.errors.append(_error(exc.problem))
        return outcome
    except InvalidConfig as exc:
        outcome.errors.extend(_error(p) for p in exc.problems)
        config = None
    except ConfigError as exc:
        outcome.errors.append({"line": 0, "field": "", "message_ja": exc.description,
                               "message_en": exc.description})
        config = None
    outcome.errors.extend(_error(problem) for problem, _ in _inline_secrets(text))
    outcome.errors.sort(key=lambda e: e["line"])
    if config is None:
        return outcome
    try:
        runtime = build_runtime(config, outcome.sha256)
    except ConfigError as exc:
        outcome.errors.append({"line": 0, "field": "", "message_ja": exc.description,
                               "message_en": exc.description})
        return outcome
    outcome.config = config
    outcome.warnings = list(config.warnings)
    outcome.guardrails = guardrail_lines(config)
    outcome.restart_needed = _restart_needed(current, config)
    if outcome.restart_needed:
        outcome.warnings.append(
            "再起動するまで反映されない設定があります / these settings change only at restart: "
            + ", ".join(outcome.restart_needed))
    tests = policy_tests_file(path)
    if tests.is_file():
        outcome.tests = run_policy_tests(runtime, tests, engine)
    return outcome


def run_policy_tests(runtime: Runtime, file: Path, engine: Any = None) -> dict[str, Any]:
    """The cases of `file` decided against `runtime`, as data (`sekisho policy test`'s rule:
    a case passes when the decision, and the reasons if it lists them, are as expected)."""
    from sekisho.cli._probe import BadInput, DeviceFacts, decide, parse_probe, registry_device
    from sekisho.cli.policy import _load_cases

    config = runtime.config
    profiles = tuple(profile.name for profile in config.devices.profiles)
    cases, problems = _load_cases(str(file), config.timezone, profiles)
    failed: list[dict[str, Any]] = [
        {"name": "", "expected": "", "got": "", "reasons": [], "route": "", "message": problem}
        for problem in problems]
    if problems:
        return {"file": str(file), "passed": 0, "failed": failed}

    def lookup(device_id: str, at: datetime) -> DeviceFacts:
        if engine is None:
            raise BadInput("device", "端末台帳がありません", "no device registry")
        return registry_device(engine, runtime, device_id, at)

    passed = 0
    for index, case in enumerate(cases):
        name = str(case["name"])
        try:
            result = decide(runtime, parse_probe(case, config.timezone), lookup)
        except BadInput as exc:
            failed.append({"name": name, "expected": case["expect"], "got": "", "reasons": [],
                           "route": "", "message": f"[{index}].{exc.field}: {exc.ja} / {exc.en}"})
            continue
        got = "allow" if result.decision.allow else "deny"
        wanted = case.get("reasons")
        reasons = list(result.decision.reasons)
        if got == case["expect"] and (wanted is None or set(wanted) == set(reasons)):
            passed += 1
            continue
        want = case["expect"] + (f" [{', '.join(wanted)}]" if wanted is not None else "")
        failed.append({
            "name": name, "expected": case["expect"], "got": got, "reasons": reasons,
            "route": result.route.id if result.route is not None else "",
            "message": f"期待 / expected {want}, 結果 / got {got} [{', '.join(reasons)}]"})
    return {"file": str(file), "passed": passed, "failed": failed}
