"""The configuration editor through `ops.run`: a real file on disk, a real SQLite database
built by the migrations, a real audit log, and a real runtime holder swapped by the same
`app.reload` a SIGHUP runs (the handler is installed in the test's event loop, so the
operation's signal reaches it exactly as in a single-process `sekisho serve`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from sekisho import app
from sekisho.audit.log import AuditLog, AuditUnavailable
from sekisho.console.admin import config_edit  # registers the config.* operations
from sekisho.console.admin.ops import (
    REGISTRY,
    Actor,
    AdminContext,
    AdminError,
    Answer,
    Call,
    Role,
    run,
)
from sekisho.identity.extensions import IdentityContext
from sekisho.identity.sessions import SessionManager
from sekisho.identity.signin import build_signin_handlers
from sekisho.storage.audit_log import iter_records
from sekisho.storage.database import create_database_engine, upgrade

BASE = """\
server:
  data_dir: "{data}"
tls:
  self_signed: true
storage:
  url: "sqlite:///{db}"
networks:
  office: ["127.0.0.0/8"]
policies:
  staff:
    allow:
      and:
        - authenticated: true
        - group: [staff]
  admins:
    allow:
      and:
        - authenticated: true
        - group: [admins]
routes:
  - id: wiki
    from: https://wiki.localhost/
    to: http://127.0.0.1:9
    segment: internet
    policy: staff
  - id: finance
    from: https://finance.localhost/
    to: http://127.0.0.1:9
    segment: lgwan
    policy: admins
"""
LGWAN_LINE = 29  # "    segment: lgwan" of the finance route
assert BASE.splitlines()[LGWAN_LINE - 1] == "    segment: lgwan"
TESTS = """\
- name: 職員は庁内から Wiki を開ける
  url: https://wiki.localhost/
  user: tanaka
  groups: [staff]
  ip: 127.0.0.1
  expect: allow
- name: サインインしていなければ Wiki は開けない
  url: https://wiki.localhost/
  ip: 127.0.0.1
  expect: deny
"""
SUPERADMIN = Actor("sato", Role.SUPERADMIN, "session", "127.0.0.1", "s1")
AUDITOR = Actor("suzuki", Role.AUDITOR, "token", "127.0.0.1", "t1")


@dataclass
class Editor:
    path: Path
    data: Path
    engine: Engine
    audit: AuditLog
    holder: app.RuntimeHolder
    ctx: AdminContext

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def call(self, op_id: str, actor: Actor = SUPERADMIN, *, reload: bool = True,
             **call: Any) -> Any:
        return self.run(lambda: run(self.ctx, actor, REGISTRY[op_id], Call(**call)),
                        reload=reload)

    def run(self, coro: Callable[[], Awaitable[Any]], *, reload: bool = True) -> Any:
        """Run in an event loop that handles SIGHUP like `sekisho serve` (or does not)."""
        async def main() -> Any:
            loop = asyncio.get_running_loop()
            if reload:
                loop.add_signal_handler(signal.SIGHUP, lambda: app.reload(
                    str(self.path), self.holder, self.audit))
            try:
                return await coro()
            finally:
                if reload:
                    loop.remove_signal_handler(signal.SIGHUP)
        return asyncio.run(main())

    def events(self, event_type: str) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in iter_records(self.engine)
                if r.event_type == event_type]

    def history(self) -> list[Path]:
        folder = self.data / config_edit.HISTORY_DIR
        return sorted(folder.iterdir()) if folder.is_dir() else []


def _identity(engine: Engine, holder: app.RuntimeHolder, audit: AuditLog) -> IdentityContext:
    found: list[IdentityContext] = []

    def capture(context: IdentityContext) -> dict[str, Any]:
        found.append(context)
        return {}

    config = holder.get().config
    build_signin_handlers(current_config=lambda: holder.get().config, engine=engine,
                          sessions=SessionManager(engine, config.session), audit=audit,
                          builders=[capture], current_runtime=holder.get)
    return found[0]


@pytest.fixture
def editor(tmp_path: Path) -> Iterator[Editor]:
    data, db = tmp_path / "data", tmp_path / "sekisho.db"
    engine = create_database_engine(f"sqlite:///{db}")
    upgrade(engine)
    path = tmp_path / "sekisho.yaml"
    path.write_text(BASE.format(data=data, db=db), encoding="utf-8")
    path.chmod(0o640)
    (tmp_path / "sekisho.tests.yaml").write_text(TESTS, encoding="utf-8")
    runtime, _ = app.load_snapshot(str(path))
    holder = app.RuntimeHolder(runtime)
    audit = AuditLog(engine)
    audit.start()
    ctx = AdminContext(_identity(engine, holder, audit))
    try:
        yield Editor(path, data, engine, audit, holder, ctx)
    finally:
        audit.close()
        engine.dispose()


def _refused(editor: Editor, op_id: str, actor: Actor = SUPERADMIN, **call: Any) -> AdminError:
    with pytest.raises(AdminError) as caught:
        editor.call(op_id, actor, **call)
    return caught.value


def _sha(editor: Editor) -> str:
    return str(editor.call("config.get")["sha256"])


def test_view_shows_text_digest_guardrails_routes_and_policies(editor: Editor) -> None:
    view = editor.call("config.get", AUDITOR)
    assert view["yaml"] == editor.text and view["path"] == str(editor.path)
    assert view["sha256"] == view["live_sha256"] == editor.holder.get().digest
    assert view["in_force"] is True and view["redacted"] == []
    assert view["profile"] == "beta-prime" and view["guardrails"][0].startswith("プロファイル")
    assert [r["id"] for r in view["routes"]] == ["wiki", "finance"]
    assert {p["name"]: p["routes"] for p in view["policies"]} == {
        "staff": ["wiki"], "admins": ["finance"]}
    assert view["policy_tests_file_exists"] is True


def test_an_error_is_answered_with_its_line_and_field_not_applied(editor: Editor) -> None:
    broken = editor.text.replace("    segment: lgwan\n", "    segment: lgwan2\n")
    answer = editor.call("config.check", AUDITOR, body={"yaml": broken})
    assert answer["ok"] is False
    [error] = answer["errors"]
    assert (error["line"], error["field"]) == (LGWAN_LINE, "routes[1].segment")
    assert error["message_ja"] and error["message_en"]
    assert "-    segment: lgwan\n+    segment: lgwan2\n" in answer["diff"]
    before = editor.text
    refused = _refused(editor, "config.apply", body={"yaml": broken,
                                                      "base_sha256": answer["base_sha256"]})
    assert (refused.code, refused.status) == ("config-invalid", 422)
    assert refused.details["errors"][0]["field"] == "routes[1].segment"
    assert editor.text == before and editor.history() == [] and not editor.events("config.edited")


def test_a_guardrail_contradiction_is_refused(editor: Editor) -> None:
    # A screen-transfer LGWAN route with the clipboard on: β′ keeps it off.
    loosened = editor.text.replace(
        "    segment: lgwan\n",
        "    segment: lgwan\n    mode: screen\n    screen: {clipboard: true}\n")
    answer = editor.call("config.check", body={"yaml": loosened})
    assert answer["ok"] is False
    assert any(e["field"] == "routes[1].screen.clipboard" and "guardrail" in e["message_en"]
               for e in answer["errors"])
    refused = _refused(editor, "config.apply", body={"yaml": loosened, "base_sha256": _sha(editor)})
    assert refused.status == 422 and editor.holder.get().digest == _sha(editor)


def test_a_failing_policy_test_refuses_the_change(editor: Editor) -> None:
    wrong = editor.text.replace("        - group: [staff]\n", "        - group: [nobody]\n")
    answer = editor.call("config.check", body={"yaml": wrong})
    assert answer["ok"] is False and answer["errors"] == []
    assert answer["tests"]["passed"] == 1
    [failure] = answer["tests"]["failed"]
    assert failure["name"] == "職員は庁内から Wiki を開ける" and failure["got"] == "deny"
    assert failure["route"] == "wiki" and failure["reasons"]
    refused = _refused(editor, "config.apply", body={"yaml": wrong, "base_sha256": _sha(editor)})
    assert refused.status == 422 and refused.details["tests"]["failed"][0]["expected"] == "allow"
    assert "group: [nobody]" not in editor.text


def test_a_valid_change_is_written_kept_reloaded_and_audited(editor: Editor) -> None:
    old_text, old_digest = editor.text, editor.holder.get().digest
    new_text = old_text.replace("    policy: admins\n", "    policy: staff\n")
    checked = editor.call("config.check", AUDITOR, body={"yaml": new_text,
                                                         "base_sha256": old_digest})
    assert checked["ok"] is True and checked["tests"]["passed"] == 2
    assert checked["stale"] is False and checked["errors"] == []
    answer = editor.call("config.apply", body={"yaml": new_text, "base_sha256": old_digest,
                                               "comment": "財務会計を職員に開放 (起案 123)"})
    assert answer["changed"] is True and answer["reload"] == "applied"
    # The file, its mode, the kept previous version.
    assert editor.text == new_text and editor.path.stat().st_mode & 0o777 == 0o640
    [kept] = editor.history()
    assert kept.read_text(encoding="utf-8") == old_text and kept.name == answer["history"]
    assert kept.stat().st_mode & 0o777 == 0o600
    assert not [p for p in editor.path.parent.iterdir() if p.name.endswith(".tmp")]
    # The live snapshot: swapped by the reload, the finance route now decided by `staff`.
    runtime = editor.holder.get()
    assert runtime.digest == answer["sha256"] != old_digest
    finance = next(r for r in runtime.config.routes if r.id == "finance")
    assert finance.policy == "staff"
    # The audit: who, before/after, the diff and the comment, then the reload itself.
    [edited] = editor.events("config.edited")
    assert (edited["admin"], edited["before_sha256"], edited["after_sha256"]) == (
        "sato", old_digest, answer["sha256"])
    assert "-    policy: admins\n+    policy: staff\n" in edited["diff"]
    assert edited["comment"] == "財務会計を職員に開放 (起案 123)" and edited["via"] == "session"
    reloaded = editor.events("config.reloaded")
    assert reloaded[-1]["sha256"] == answer["sha256"]
    seqs = {r.event_type: r.seq for r in iter_records(editor.engine)}
    assert seqs["config.edited"] < seqs["config.reloaded"]
    listed = editor.call("config.history", AUDITOR)["versions"]
    assert [v["name"] for v in listed] == [kept.name]
    version = editor.call("config.version", AUDITOR, path={"name": kept.name})
    assert version["yaml"] == old_text and version["sha256"] == old_digest


def test_a_stale_base_is_refused_so_two_admins_cannot_overwrite_each_other(
        editor: Editor) -> None:
    base = _sha(editor)
    first = editor.text.replace("    policy: admins\n", "    policy: staff\n")
    assert editor.call("config.apply", body={"yaml": first, "base_sha256": base})["changed"]
    second = editor.text.replace("  - id: wiki\n", "  - id: wiki\n    title: Wiki\n")
    refused = _refused(editor, "config.apply", body={"yaml": second, "base_sha256": base})
    assert (refused.code, refused.status) == ("config-changed", 409)
    assert refused.details == {"sha256": _sha(editor)}
    assert editor.text == first
    stale = editor.call("config.check", body={"yaml": second, "base_sha256": base})
    assert stale["stale"] is True and stale["ok"] is True


def test_an_audit_failure_leaves_the_file_untouched(editor: Editor) -> None:
    before, digest = editor.text, _sha(editor)
    editor.audit.close()  # the audit log is down: nothing may change
    new_text = before.replace("    policy: admins\n", "    policy: staff\n")
    with pytest.raises(AuditUnavailable):
        editor.call("config.apply", body={"yaml": new_text, "base_sha256": digest})
    assert editor.text == before and editor.history() == []
    assert editor.holder.get().digest == digest


def test_a_write_failure_is_audited_and_the_file_stays(editor: Editor) -> None:
    editor.data.mkdir(parents=True, exist_ok=True)
    (editor.data / config_edit.HISTORY_DIR).write_text("not a folder", encoding="utf-8")
    before = editor.text
    new_text = before.replace("    policy: admins\n", "    policy: staff\n")
    refused = _refused(editor, "config.apply", body={"yaml": new_text,
                                                      "base_sha256": _sha(editor)})
    assert (refused.code, refused.status) == ("config-write-failed", 503)
    assert editor.text == before
    [failed] = editor.events("config.edit_failed")
    assert failed["admin"] == "sato" and failed["error"]
    assert len(editor.events("config.edited")) == 1  # audited before the attempt


def test_without_a_reload_handler_the_answer_says_pending(editor: Editor) -> None:
    # Nothing in this process handles SIGHUP (its default would end the process): the file
    # is saved, no signal is sent, and the answer does not claim the change is live.
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    digest = editor.holder.get().digest
    new_text = editor.text.replace("    policy: admins\n", "    policy: staff\n")
    result = editor.call("config.apply", reload=False,
                         body={"yaml": new_text, "base_sha256": digest})
    assert isinstance(result, Answer) and result.status == 202  # accepted, not in force
    answer = result.body
    assert (answer["changed"], answer["reload"]) == (True, "pending")
    assert editor.text == new_text and editor.holder.get().digest == digest


def test_saving_the_same_text_changes_nothing(editor: Editor) -> None:
    answer = editor.call("config.apply", body={"yaml": editor.text, "base_sha256": _sha(editor)})
    assert (answer["changed"], answer["reload"]) == (False, "unchanged")
    assert editor.history() == [] and not editor.events("config.edited")


def test_history_is_bounded(editor: Editor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_edit, "HISTORY_KEEP", 2)
    for n in range(4):
        text = editor.text.replace("  - id: wiki\n", f"  - id: wiki\n    title: Wiki {n}\n", 1)
        if n:
            text = text.replace(f"    title: Wiki {n - 1}\n", "")
        editor.call("config.apply", body={"yaml": text, "base_sha256": _sha(editor)})
    kept = editor.history()
    assert len(kept) == 2 and "Wiki 2" in kept[-1].read_text(encoding="utf-8")


def test_secrets_must_stay_references_and_are_redacted_in_view(editor: Editor) -> None:
    os.environ["SEKISHO_TEST_DB_PASSWORD"] = "hunter2-secret"
    leaked = editor.text.replace(
        "  url: \"sqlite:", "  url: \"postgresql://sekisho:hunter2-secret@db.example/x\"\n"
        "  #\"sqlite:")
    answer = editor.call("config.check", body={"yaml": leaked})
    assert answer["ok"] is False
    assert any(e["field"] == "storage.url" and "env:NAME" in e["message_en"]
               for e in answer["errors"])
    assert not any("hunter2" in json.dumps(e) for e in answer["errors"])
    # A file written by hand with an inline credential: shown redacted, never sent out.
    editor.path.write_text(leaked, encoding="utf-8")
    view = editor.call("config.get", AUDITOR)
    assert "hunter2" not in view["yaml"] and view["redacted"] == ["storage.url"]
    assert "<秘密のため非表示 / redacted>" in view["yaml"]
    diff = editor.call("config.check", body={"yaml": BASE})["diff"]
    assert "hunter2" not in diff
    del os.environ["SEKISHO_TEST_DB_PASSWORD"]


def test_a_secret_that_cannot_be_located_withholds_the_whole_text() -> None:
    from sekisho.console.admin.config_check import redact

    text = "hooks:\n  edr:\n    secret: |\n      s3cret-value\n"
    assert redact(text) == (None, ["hooks.edr.secret"])
    shown, hidden = redact('hooks:\n  edr:\n    secret: "s3cret"\n')
    assert shown is not None and "s3cret" not in shown and hidden == ["hooks.edr.secret"]
    assert redact("hooks:\n  edr:\n    secret: env:EDR_SECRET\n")[1] == []


def test_roles_malformed_input_and_unknown_versions(editor: Editor) -> None:
    text = editor.text
    assert _refused(editor, "config.apply", AUDITOR,
                    body={"yaml": text, "base_sha256": _sha(editor)}).status == 403
    helpdesk = Actor("kato", Role.HELPDESK, "session", "127.0.0.1")
    assert _refused(editor, "config.apply", helpdesk,
                    body={"yaml": text, "base_sha256": _sha(editor)}).status == 403
    assert editor.call("config.check", helpdesk, body={"yaml": text})["ok"] is True
    for body in ({"yaml": text}, {"yaml": 3, "base_sha256": "0" * 64},
                 {"yaml": text, "base_sha256": "abc"}, {"yaml": text, "extra": 1}):
        assert _refused(editor, "config.apply", body=body).status == 422
    assert _refused(editor, "config.check", body=[]).status == 422
    assert _refused(editor, "config.version", path={"name": "../sekisho.yaml"}).status == 422
    missing = _refused(editor, "config.version", path={"name": "20260101T000000000000Z-"
                                                               "0123abcd.yaml"})
    assert (missing.code, missing.status) == ("not-found", 404)


def test_a_configuration_without_a_file_cannot_be_edited(editor: Editor) -> None:
    from sekisho.config.loader import parse_config
    from sekisho.runtime import build_runtime

    config = parse_config(editor.text, "<demo>")
    editor.holder.swap(build_runtime(config, config.digest))
    for op_id, call in (("config.get", {}), ("config.history", {}),
                        ("config.check", {"body": {"yaml": editor.text}}),
                        ("config.apply", {"body": {"yaml": editor.text,
                                                   "base_sha256": "0" * 64}})):
        refused = _refused(editor, op_id, **call)
        assert (refused.code, refused.status) == ("config-no-file", 409), op_id


# --------------------------------------------------------------------------- a real gateway


def test_an_edit_through_the_api_reaches_every_worker(tmp_path: Path) -> None:
    """`sekisho serve` with two workers: PUT /config on one worker signals the master, whose
    reload reaches both workers; the route's new policy decides the very next requests."""
    import sys
    import time
    from datetime import UTC, datetime, timedelta

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration"))
    from harness import EchoUpstream, GatewayProcess

    from sekisho.storage import api_tokens

    upstream = EchoUpstream()
    gateway = GatewayProcess(tmp_path, f"sqlite:///{tmp_path}/sekisho.db", upstream)
    gateway.config.write_text(gateway.config.read_text().replace("workers: 1", "workers: 2"))
    gateway.provision()
    engine = create_database_engine(f"sqlite:///{tmp_path}/sekisho.db")
    now = datetime.now(UTC)
    _, token = api_tokens.create(engine, name="ci", role="superadmin", created_by="test",
                                 now=now, expires_at=now + timedelta(days=1))
    engine.dispose()
    gateway.start()
    try:
        tanaka = gateway.browser()
        tanaka.signin("finance.localhost", "tanaka")
        assert tanaka.get("finance.localhost", "/ledger").status == 403  # admins only
        api = gateway.browser()
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        view = api.get("wiki.localhost", "/.sekisho/api/config", headers=auth)
        assert view.status == 200, view.body[:400]
        current = view.json()
        text = str(current["yaml"]).replace(
            "    segment: lgwan\n    policy: admins", "    segment: lgwan\n    policy: staff")
        # A large file (here a long comment) fits limits.max_admin_body_bytes, not the 64 KiB
        # of the sign-in forms, which keep their own small limit.
        text += "# " + "庁内メモ " * 20_000 + "\n"
        assert len(text.encode()) > 128 * 1024
        signin = gateway.browser().request("POST", "wiki.localhost", "/.sekisho/signin",
                                           body=b"x" * (128 * 1024))
        assert signin.status == 413
        body = json.dumps({"yaml": text, "base_sha256": current["sha256"],
                           "comment": "財務会計を職員へ"}).encode()
        started = time.monotonic()
        saved = api.request("PUT", "wiki.localhost", "/.sekisho/api/config", body=body,
                            headers=auth)
        assert saved.status == 200, saved.body[:600]
        assert saved.json()["reload"] == "applied" and time.monotonic() - started < 5
        # New connections each time: the kernel spreads them over both workers.
        statuses = [gateway.browser().request(
            "GET", "finance.localhost", f"/ledger/{n}",
            headers={"Cookie": "; ".join(f"{k}={v}" for k, v in
                                         tanaka.cookies_for("finance.localhost").items())}
        ).status for n in range(12)]
        assert statuses == [200] * 12
        again = api.request("PUT", "wiki.localhost", "/.sekisho/api/config", body=body,
                            headers=auth)
        assert again.status == 409 and again.json()["error"]["code"] == "config-changed"
        exported = gateway.cli("audit", "export", "--format", "jsonl").stdout
        edited = [json.loads(line)["event"] for line in exported.splitlines()
                  if '"config.edited"' in line]
        assert len(edited) == 1 and edited[0]["admin"] == "token:ci"
    finally:
        gateway.stop()
        upstream.close()
