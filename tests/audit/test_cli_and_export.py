"""`sekisho audit verify|export` against a real database, tampering included."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from sekisho.audit.chain import verify
from sekisho.audit.events import AccessDecision, SignInFailed, UserChanged
from sekisho.audit.export import BOM, records_from_jsonl
from sekisho.audit.log import AuditLog
from sekisho.cli import main

T0 = datetime(2024, 4, 1, 0, 0, tzinfo=UTC)  # 09:00 in Japan


@pytest.fixture
def filled(engine: Engine) -> Engine:
    """Ten records, one per hour from 2024-04-01 09:00 JST; a hostile user name in seq 3."""
    clock = iter(T0 + timedelta(hours=n) for n in range(100))
    log = AuditLog(engine, now=lambda: next(clock))
    for n in range(10):
        if n == 2:
            event: object = SignInFailed(user='=HYPERLINK("http://evil/")', source_ip="192.0.2.9",
                                         reason="invalid-credentials")
        elif n % 2:
            event = UserChanged(admin="admin", user=f"職員{n}", action="create")
        else:
            event = AccessDecision(route="portal", user="tanaka", decision="deny",
                                   reasons=("group-unauthorized", "source-ip-denied"),
                                   source_ip="192.0.2.1", method="GET", path="/経理/", status=403,
                                   bytes_in=0, bytes_out=10, duration_ms=1.5)
        log.append_sync(event)  # type: ignore[arg-type]
    log.close()
    return engine


def run(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    code = main(["audit", *args, "--database-url", url])
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_passes_on_an_intact_chain(filled: Engine, database_url: str, capsys) -> None:
    code, out, _ = run(capsys, database_url, "verify")
    assert code == 0
    assert "audit chain OK: 10 records, head seq 10" in out


@pytest.mark.parametrize(("statement", "named"), [
    ("UPDATE audit_events SET body = replace(body, 'tanaka', 'suzuki') WHERE seq = 5",
     "seq 5: hash mismatch (record modified)"),
    ("UPDATE audit_events SET hash = '" + "a" * 64 + "' WHERE seq = 4",
     "seq 4: hash mismatch (record modified)"),
    ("DELETE FROM audit_events WHERE seq = 6", "seq 6: record missing (deleted)"),
    ("DELETE FROM audit_events WHERE seq = 10", "seq 10: record missing (deleted)"),
    ("UPDATE audit_events SET actor = 'nobody' WHERE seq = 2", "seq 2: actor column"),
    # The search columns are not hashed: a changed one would hide a denial from searches.
    ("UPDATE audit_events SET decision = 'allow' WHERE seq = 5", "seq 5"),
    ("UPDATE audit_events SET route = 'elsewhere' WHERE seq = 7", "seq 7"),
    ("DELETE FROM audit_reasons WHERE seq = 9", "seq 9"),
])
def test_verify_names_the_tampered_record(filled: Engine, database_url: str, capsys,
                                          statement: str, named: str) -> None:
    with filled.begin() as connection:
        connection.execute(text(statement))
    code, _, err = run(capsys, database_url, "verify")
    assert code == 1
    assert "audit chain BROKEN" in err and named in err


def test_export_jsonl_lines_parse_and_reverify(filled: Engine, database_url: str,
                                               tmp_path: Path, capsys) -> None:
    target = tmp_path / "audit.jsonl"
    code, _, err = run(capsys, database_url, "export", "--format", "jsonl", "-o", str(target))
    assert code == 0 and "10" in err
    lines = target.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, 11))
    assert json.loads(lines[0])["event"]["occurred_at"] == "2024-04-01T00:00:00.000000Z"
    assert verify(records_from_jsonl(lines)).ok
    assert main(["audit", "verify", "--jsonl", str(target)]) == 0
    lines[4] = lines[4].replace("tanaka", "suzuki")
    assert verify(records_from_jsonl(lines)).first_broken_seq == 5


def test_export_csv_opens_in_excel_and_parses_back(filled: Engine, database_url: str,
                                                   tmp_path: Path, capsys) -> None:
    target = tmp_path / "audit.csv"
    assert run(capsys, database_url, "export", "--format", "csv", "-o", str(target))[0] == 0
    raw = target.read_bytes()
    assert raw.startswith(BOM.encode("utf-8"))
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert rows[0][:4] == ["連番", "日時(日本時間)", "種別", "操作者"]
    assert len(rows) == 11
    first = dict(zip(rows[0], rows[1]))
    assert first["日時(日本時間)"] == "2024-04-01T09:00:00.000000+09:00"
    assert first["理由"] == "group-unauthorized;source-ip-denied"
    assert first["パス"] == "/経理/" and first["状態コード"] == "403"
    hostile = dict(zip(rows[0], rows[3]))
    # Formula injection: the typed user name must stay text in Excel.
    assert hostile["操作者"] == "'=HYPERLINK(\"http://evil/\")"


def test_export_filters_by_japan_time_type_and_user(filled: Engine, database_url: str,
                                                     capsys) -> None:
    code, out, _ = run(capsys, database_url, "export", "--since", "2024-04-01T12:00",
                       "--until", "2024-04-01T15:00")
    assert code == 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [4, 5, 6]
    _, out, _ = run(capsys, database_url, "export", "--type", "access.decision",
                    "--user", "tanaka", "--since", "2024-04-01")
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [1, 5, 7, 9]


def test_export_rejects_an_inverted_range(filled: Engine, database_url: str, capsys) -> None:
    code, _, err = run(capsys, database_url, "export", "--since", "2024-04-02",
                       "--until", "2024-04-01")
    assert code == 2 and "--since" in err


def test_unmigrated_database_is_refused(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, f"sqlite:///{tmp_path}/empty.db", "verify")
    assert code == 2 and "sekisho db upgrade" in err


def test_database_url_comes_from_the_environment(filled: Engine, database_url: str, capsys,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEKISHO_DATABASE_URL", database_url)
    assert main(["audit", "verify"]) == 0
    assert "10 records" in capsys.readouterr().out
