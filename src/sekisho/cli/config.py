"""`sekisho check-config FILE`, `sekisho config check FILE`, `sekisho config schema`.

check-config validates without starting anything: exit 0 with a one-line summary followed by
the effective segment guardrails (one line per segment) and any warnings (on stderr), or exit
1 listing every problem (file:line: field: expected …) — a route contradicting its guardrail
among them. It never prints a traceback or a secret: an unexpected failure is reported by its
type name only.
"""

from __future__ import annotations

import argparse
import sys

from sekisho.config.model import Config
from sekisho.errors import ConfigError


def _check(args: argparse.Namespace) -> int:
    from sekisho.config import load_config

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(exc.description, file=sys.stderr)
        return 1
    except Exception as exc:  # no traceback: it could carry a secret from a local variable
        print(
            f"{args.file}: 内部エラーのため検査できません / internal error while checking "
            f"({type(exc).__name__})",
            file=sys.stderr,
        )
        return 1
    routes, policies = len(config.routes), len(config.policies)
    print(
        f"OK: {routes} route{'s' if routes != 1 else ''}, "
        f"{policies} polic{'ies' if policies != 1 else 'y'} "
        f"({args.file}, sha256 {config.digest[:12]})"
    )
    print("\n".join(guardrail_lines(config)))
    for warning in config.warnings:
        print(warning, file=sys.stderr)
    return 0


def guardrail_lines(config: Config) -> list[str]:
    """The effective guardrails of `config`, one line per segment (Japanese / English)."""
    from sekisho.config.segments import guardrail_networks
    from sekisho.policy.guardrails import GUIDELINE_EN, GUIDELINE_JA, LABELS, describe

    if config.profile is None:
        return ["ガードレールなし / no guardrails"]
    label = LABELS[config.profile]
    lines = [f"プロファイル / profile: {config.profile} ({label}) — {GUIDELINE_JA} / "
             f"{GUIDELINE_EN}",
             "ガードレール / guardrails (docs/segments.md):"]
    for segment, ja, en in describe(config.profile, guardrail_networks(config.networks)):
        lines.append(f"  {segment}: {ja} / {en}")
    return lines


def _schema(_args: argparse.Namespace) -> int:
    from sekisho.config.reference import schema_text

    sys.stdout.write(schema_text())
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check_help = (
        "設定ファイルを検査する（起動しない）/ validate a configuration file without starting"
    )
    top = subparsers.add_parser("check-config", help=check_help, description=check_help)
    top.add_argument("file", metavar="FILE", help="設定ファイル / configuration file")
    top.set_defaults(handler=_check)

    group = subparsers.add_parser(
        "config", help="設定ファイルの検査とスキーマ / configuration tools"
    )
    actions = group.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", help=check_help, description=check_help)
    check.add_argument("file", metavar="FILE", help="設定ファイル / configuration file")
    check.set_defaults(handler=_check)
    schema_help = "JSON Schema を表示する / print the configuration JSON Schema"
    schema = actions.add_parser("schema", help=schema_help, description=schema_help)
    schema.set_defaults(handler=_schema)
