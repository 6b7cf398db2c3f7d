"""Secrets by reference: resolved at load, never printed in errors, repr or str."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sekisho.config import load_config, parse_config
from sekisho.config.reference import secret_paths
from sekisho.errors import ConfigError

PASSWORD = "Tr0ub4dor-and-3-horses"
URL = f"postgresql://sekisho:{PASSWORD}@db.example.jp/sekisho"


def test_secret_fields_are_declared_in_the_schema() -> None:
    assert ("storage", "url") in secret_paths()


def test_env_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEKISHO_TEST_DB", URL)
    config = parse_config("tls: {enabled: false}\nstorage: {url: env:SEKISHO_TEST_DB}\n")
    assert config.storage_url.reveal() == URL
    assert PASSWORD not in repr(config) and PASSWORD not in str(config)
    assert "env:SEKISHO_TEST_DB" in repr(config.storage_url)


def test_file_reference_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "db-url").write_text(URL + "\n")
    path = tmp_path / "sekisho.yaml"
    path.write_text("tls: {enabled: false}\nstorage: {url: 'file:db-url'}\n")
    config = load_config(path)
    assert config.storage_url.reveal() == URL  # trailing newline stripped
    assert PASSWORD not in repr(config)


def test_unreadable_and_empty_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("SEKISHO_TEST_EMPTY", "")
    for ref, fragment in [
        (f"file:{tmp_path}/empty", "is empty"),
        (f"file:{tmp_path}", "cannot read file"),  # a directory
        ("env:SEKISHO_TEST_EMPTY", "is empty"),
        ("env:NOT-A-NAME", "not a valid environment variable name"),
    ]:
        with pytest.raises(ConfigError) as caught:
            parse_config(f"tls: {{enabled: false}}\nstorage:\n  url: '{ref}'\n", "s.yaml")
        assert "s.yaml:3: storage.url: " in str(caught.value)
        assert fragment in str(caught.value)


BROKEN_ELSEWHERE = textwrap.dedent("""\
    tls: {enabled: false}
    storage:
      url: {ref}
    server:
      workers: many
    routes:
      - id: a
        from: https://a.example.jp/
        to: http://u:{password}@10.0.0.1/
        segment: internet
        policy: nobody
    """)


def test_secret_never_leaks_into_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEKISHO_TEST_DB", URL)
    text = BROKEN_ELSEWHERE.replace("{ref}", "env:SEKISHO_TEST_DB").replace("{password}", PASSWORD)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "s.yaml")
    message = str(caught.value)
    assert "s.yaml:5: server.workers" in message and "s.yaml:9: routes[0].to" in message
    assert PASSWORD not in message
    assert PASSWORD not in repr(caught.value)


@pytest.mark.parametrize(
    "value",
    [
        f"mysql://root:{PASSWORD}@db/x",  # semantic error on the secret field itself
        f'["{PASSWORD}"]',  # schema type error on the secret field
    ],
)
def test_inline_secret_value_is_not_echoed(value: str) -> None:
    text = f"tls: {{enabled: false}}\nstorage:\n  url: {value}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "s.yaml")
    assert "s.yaml:3: storage.url:" in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_secret_not_echoed_from_yaml_syntax_errors() -> None:
    text = f'tls: {{enabled: false}}\nstorage:\n  url: "postgresql://u:{PASSWORD}@h/db\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "s.yaml")
    assert PASSWORD not in str(caught.value)


def test_unknown_key_beside_a_secret_does_not_print_it(monkeypatch: pytest.MonkeyPatch) -> None:
    text = f"tls: {{enabled: false}}\nstorage:\n  url: '{URL}'\n  pool: 5\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "s.yaml")
    assert "s.yaml:4: storage.pool" in str(caught.value)
    assert PASSWORD not in str(caught.value)
