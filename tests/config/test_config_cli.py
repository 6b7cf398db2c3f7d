"""The real command line: check-config / config check / config schema, exit codes, no traces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SEKISHO = REPO / ".venv" / "bin" / "sekisho"
EXAMPLE = REPO / "examples" / "sekisho.example.yaml"
COMMAND = [str(SEKISHO)] if SEKISHO.exists() else [sys.executable, "-m", "sekisho"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "SEKISHO_DATABASE_URL"}
    environment.update(env or {})
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, env=environment, timeout=60, check=False
    )


def test_example_passes_check_config() -> None:
    result = run(
        "check-config",
        str(EXAMPLE),
        env={"SEKISHO_DATABASE_URL": "postgresql://sekisho:pw-123456@db/sekisho"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: 5 routes, 3 policies")
    assert "pw-123456" not in result.stdout + result.stderr


def test_config_check_is_the_same_command() -> None:
    result = run("config", "check", str(EXAMPLE), env={"SEKISHO_DATABASE_URL": "sqlite:///x.db"})
    assert result.returncode == 0, result.stderr


def test_missing_secret_fails_with_line_and_field() -> None:
    result = run("check-config", str(EXAMPLE))
    assert result.returncode == 1
    assert f"{EXAMPLE}:28: storage.url: " in result.stderr
    assert "SEKISHO_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_broken_file_lists_every_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("tls: {enabled: false}\nserver:\n  workers: 0\nlanguage: fr\nfoo: 1\n")
    result = run("check-config", str(path))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{path}: ") and "3 problems" in lines[0]
    assert [line.split(":")[1] for line in lines[1:]] == ["3", "4", "5"]
    assert "Traceback" not in result.stderr


def test_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server: [\n")
    for target in (path, tmp_path / "absent.yaml", tmp_path):
        result = run("check-config", str(target))
        assert result.returncode == 1, target
        assert "Traceback" not in result.stderr
        assert str(target) in result.stderr


def test_schema_command_prints_the_schema() -> None:
    result = run("config", "schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "routes" in schema["properties"]
