"""docs/audit.md documents every event type with all its fields, and nothing else; its
independent-verification snippet really verifies an export."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine

from sekisho.audit import events
from sekisho.audit.events import AuditEvent, SignedOut
from sekisho.audit.export import write_jsonl
from sekisho.audit.log import AuditLog
from sekisho.storage.audit_log import iter_records

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def _event_classes() -> dict[str, type[AuditEvent]]:
    found: dict[str, type[AuditEvent]] = {}
    pending = list(AuditEvent.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        # slots=True dataclasses leave the pre-slots class behind: keep the module's own.
        if getattr(events, cls.__name__, None) is cls:
            found[cls.event_type] = cls
    return found


def _sections() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    parts = re.split(r"^### `([^`]+)` — \w+$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_event_is_documented_and_every_documented_event_exists() -> None:
    assert set(_sections()) == set(_event_classes())


def test_every_field_is_documented() -> None:
    sections = _sections()
    for event_type, cls in _event_classes().items():
        documented = set(re.findall(r"^\| `(\w+)` \|", sections[event_type], re.MULTILINE))
        assert documented == {field.name for field in dataclasses.fields(cls)}, event_type
        assert f"— {cls.__name__}" in DOC.read_text(encoding="utf-8")


def test_the_auditors_snippet_verifies_an_export(engine: Engine, tmp_path: Path) -> None:
    snippet = DOC.read_text(encoding="utf-8").split("```python\n", 1)[1].split("```", 1)[0]
    assert len(snippet.strip().splitlines()) <= 12
    log = AuditLog(engine)
    for n in range(5):
        log.append_sync(SignedOut(user=f"職員{n}", session="s"))
    export = tmp_path / "audit.jsonl"
    with export.open("w", encoding="utf-8") as out:
        write_jsonl(iter_records(engine), out)
    script = tmp_path / "check.py"
    script.write_text(snippet, encoding="utf-8")
    ok = subprocess.run([sys.executable, str(script), str(export)], capture_output=True,
                        text=True, check=False)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: 5 records"), ok.stderr
    lines = export.read_text(encoding="utf-8").splitlines()
    export.write_text("\n".join([lines[0], lines[1].replace("職員1", "職員9"), *lines[2:]]),
                      encoding="utf-8")
    bad = subprocess.run([sys.executable, str(script), str(export)], capture_output=True,
                         text=True, check=False)
    assert bad.returncode == 1 and "seq 2: broken" in bad.stderr
