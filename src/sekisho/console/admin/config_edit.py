"""The live configuration in the console: view, check (schema, guardrails, policy tests, diff)
and apply through the same atomic reload as SIGHUP.

Applying is ordered so that every failure leaves a true record and a working file: the text
is checked exactly as a reload would check it (`config_check`), the change is audited
(`ConfigEdited`, durable) BEFORE the file is touched — an audit failure changes nothing —
then the previous file is kept in the history and the new one replaces it atomically (temp
file in the same folder, fsync, rename), and the reload is signalled (the master when
workers run, else this process). The answer says whether the live snapshot carries the new
digest within `RELOAD_WAIT` seconds, or honestly that the reload is still pending.

Two administrators editing at once cannot overwrite each other: an edit names the digest
it was based on (`base_sha256`) and is refused (409) when the file has changed since, under
a file lock shared by every process of the installation.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import signal
import stat
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sekisho.audit.events import ConfigEdited, ConfigEditFailed
from sekisho.config.yamlfile import MAX_BYTES
from sekisho.console.admin.config_check import (
    Outcome,
    check_text,
    policy_tests_file,
    redact,
    sha256,
    unified_diff,
)
from sekisho.console.admin.ops import (
    READERS,
    SUPERADMIN_ONLY,
    Actor,
    AdminContext,
    AdminError,
    Answer,
    Call,
    Operation,
    not_found,
    register,
)

HISTORY_DIR = "config-history"  # under server.data_dir
HISTORY_KEEP = 50
LOCK_FILE = "config-edit.lock"
LOCK_WAIT = 10.0  # seconds to wait for another edit to finish
RELOAD_WAIT = 5.0  # seconds to wait for the live snapshot to carry the new digest
AUDIT_DIFF_MAX = 16 * 1024
HISTORY_NAME = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{8}\.yaml$")
_SHA = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_TEXT = {"type": "string", "maxLength": MAX_BYTES}


def _no_file() -> AdminError:
    return AdminError(
        "config-no-file", "この構成は設定ファイルから起動していないため、ここでは編集できません。",
        "This installation was not started from a configuration file, so it cannot be edited "
        "here.", 409)


def _path(ctx: AdminContext) -> Path:
    path = ctx.config_path
    if path is None:
        raise _no_file()
    return Path(path)


def _history(ctx: AdminContext) -> Path:
    return Path(ctx.identity.current_config().server.data_dir) / HISTORY_DIR


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise AdminError("config-unreadable", f"設定ファイルを読めません: {exc.strerror}",
                         f"Cannot read the configuration file: {exc.strerror}", 503) from None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8-sig", errors="replace")


# --------------------------------------------------------------------------- view


def _summary(ctx: AdminContext) -> dict[str, Any]:
    from sekisho.cli.config import guardrail_lines

    config = ctx.identity.current_config()
    used: dict[str, list[str]] = {name: [] for name in config.policies}
    for route in config.routes:
        used.setdefault(route.policy, []).append(route.id)
    return {
        "profile": config.profile or "",
        "guardrails": guardrail_lines(config),
        "warnings": list(config.warnings),
        "routes": [{"id": r.id, "title": r.title, "host": r.host, "path_prefix": r.path_prefix,
                    "segment": r.segment, "policy": r.policy, "mode": r.mode}
                   for r in config.routes],
        "policies": [{"name": name, "routes": routes} for name, routes in used.items()],
    }


async def get_config(ctx: AdminContext, actor: Actor, call: Call) -> dict[str, Any]:
    path = _path(ctx)
    raw = await asyncio.to_thread(_read, path)
    text, hidden = redact(_text(raw))
    runtime = ctx.identity.current_runtime
    live = runtime().digest if runtime is not None else ctx.identity.current_config().digest
    modified = datetime.fromtimestamp((await asyncio.to_thread(path.stat)).st_mtime, UTC)
    tests = policy_tests_file(path)
    return {
        "path": str(path), "sha256": sha256(raw), "yaml": text, "redacted": hidden,
        "live_sha256": live, "in_force": live == sha256(raw),
        "modified_at": modified.isoformat(), "policy_tests_file": str(tests),
        "policy_tests_file_exists": tests.is_file(), **_summary(ctx),
    }


# --------------------------------------------------------------------------- check


async def _check(ctx: AdminContext, path: Path, text: str, current: bytes) -> Outcome:
    return await asyncio.to_thread(
        check_text, text, path=str(path), current_text=_text(current),
        current=ctx.identity.current_config(), engine=ctx.identity.engine)


async def check_config(ctx: AdminContext, actor: Actor, call: Call) -> dict[str, Any]:
    path = _path(ctx)
    current = await asyncio.to_thread(_read, path)
    outcome = await _check(ctx, path, call.body["yaml"], current)
    answer = outcome.as_json()
    base = call.body.get("base_sha256")
    answer["base_sha256"] = sha256(current)
    answer["stale"] = base is not None and base != sha256(current)
    if answer["stale"]:
        answer["warnings"].insert(0, "読み込んだ後に設定ファイルが変更されています / the file "
                                     "has changed since it was loaded")
    return answer


# --------------------------------------------------------------------------- apply


@contextlib.asynccontextmanager
async def _edit_lock(data_dir: Path) -> AsyncIterator[None]:
    """One edit at a time across every process of the installation (flock on a file in the
    data directory; released by the kernel if the process dies)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AdminError(
                        "config-busy", "別の管理者が設定を変更中です。少し待ってください。",
                        "Another administrator is changing the configuration; try again "
                        "shortly.", 409) from None
                await asyncio.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def _atomic_write(target: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    """Readers see the old file or the new one, never half of it, even after a crash."""
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if owner is not None:
                with contextlib.suppress(PermissionError):
                    os.fchown(handle.fileno(), *owner)
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def _write(path: Path, new: bytes, old: bytes, history: Path, now: datetime) -> str:
    """Keep `old` in the history, then replace the file (mode and owner kept); prune."""
    history.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = f"{now:%Y%m%dT%H%M%S%f}Z-{sha256(old)[:8]}.yaml"
    _atomic_write(history / name, old, 0o600, None)
    target = path.resolve()  # a symlinked file is replaced where it really lives
    info = target.stat()
    owner = (info.st_uid, info.st_gid) if (info.st_uid, info.st_gid) != (
        os.geteuid(), os.getegid()) else None
    _atomic_write(target, new, stat.S_IMODE(info.st_mode), owner)
    kept = sorted(p for p in history.iterdir() if HISTORY_NAME.match(p.name))
    for stale in kept[:-HISTORY_KEEP]:
        with contextlib.suppress(OSError):
            stale.unlink()
    return name


def signal_reload() -> bool:
    """Ask for the SIGHUP reload: the master when this is one of its workers, else this
    process — but only if something here handles SIGHUP (its default action would kill
    the process)."""
    from sekisho.app import MASTER_PID_ENV

    master = os.environ.get(MASTER_PID_ENV, "")
    target = int(master) if master.isdigit() else os.getpid()
    if target == os.getpid() and signal.getsignal(signal.SIGHUP) in (
            signal.SIG_DFL, signal.SIG_IGN, None):
        return False
    try:
        os.kill(target, signal.SIGHUP)
    except OSError:
        return False
    return True


async def _reloaded(ctx: AdminContext, digest: str) -> bool:
    current = ctx.identity.current_runtime
    if current is None:
        return False
    deadline = time.monotonic() + RELOAD_WAIT
    while current().digest != digest:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def apply_config(ctx: AdminContext, actor: Actor, call: Call) -> dict[str, Any] | Answer:
    path = _path(ctx)
    text: str = call.body["yaml"]
    new = text.encode("utf-8")
    async with _edit_lock(Path(ctx.identity.current_config().server.data_dir)):
        old = await asyncio.to_thread(_read, path)
        before = sha256(old)
        if call.body["base_sha256"] != before:
            # Two admins editing at once: the later save would silently undo the other's.
            raise AdminError(
                "config-changed", "読み込んだ後に設定ファイルが変更されています。読み込み直して"
                "から編集してください。", "The configuration file has changed since you "
                "loaded it; reload it and edit again.", 409, details={"sha256": before})
        outcome = await _check(ctx, path, text, old)
        if not outcome.ok:
            raise AdminError(
                "config-invalid", "設定に問題があるため保存しませんでした。",
                "The configuration has problems and was not saved.", 422,
                details=outcome.as_json())
        after = outcome.sha256
        if new == old:
            return {"changed": False, "reload": "unchanged", "sha256": after,
                    "previous_sha256": before, "history": None, "warnings": outcome.warnings}
        diff, _ = unified_diff(_text(old), text, path.name)
        if len(diff) > AUDIT_DIFF_MAX:
            diff = diff[:AUDIT_DIFF_MAX] + "\n… (切り詰め / truncated)\n"
        # Audit first: if the record cannot be made durable, the file is not touched.
        await ctx.identity.audit.append(ConfigEdited(
            admin=actor.name, source=str(path), before_sha256=before, after_sha256=after,
            diff=diff, comment=str(call.body.get("comment", "")), via=actor.via,
            source_ip=actor.source_ip))
        try:
            kept = await asyncio.to_thread(_write, path, new, old, _history(ctx), ctx.now)
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            with contextlib.suppress(Exception):  # the 503 below is the answer either way
                await ctx.identity.audit.append(ConfigEditFailed(
                    admin=actor.name, source=str(path), after_sha256=after, error=why,
                    source_ip=actor.source_ip))
            raise AdminError("config-write-failed", f"設定ファイルを書けませんでした: {why}",
                             f"Could not write the configuration file: {why}", 503) from None
    applied = signal_reload() and await _reloaded(ctx, after)
    answer = {"changed": True, "reload": "applied" if applied else "pending", "sha256": after,
              "previous_sha256": before, "history": kept, "warnings": outcome.warnings,
              "message_ja": "保存し、適用しました。" if applied else
              "保存しました。再読み込みはまだ完了していません（ログを確認してください）。",
              "message_en": "Saved and applied." if applied else
              "Saved to the file; the reload has not completed yet (see the log)."}
    # 202: saved, not (yet) in force — the client must not take the change as applied.
    return answer if applied else Answer(answer, status=202)


# --------------------------------------------------------------------------- history


def _versions(history: Path) -> list[dict[str, Any]]:
    if not history.is_dir():
        return []
    out = []
    for file in sorted(history.iterdir(), reverse=True):
        if not HISTORY_NAME.match(file.name):
            continue
        saved = datetime.strptime(file.name[:22], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
        out.append({"name": file.name, "saved_at": saved.isoformat(),
                    "size": file.stat().st_size, "sha256_prefix": file.name[23:31]})
    return out


async def list_history(ctx: AdminContext, actor: Actor, call: Call) -> dict[str, Any]:
    _path(ctx)
    return {"versions": await asyncio.to_thread(_versions, _history(ctx)),
            "keep": HISTORY_KEEP}


async def get_version(ctx: AdminContext, actor: Actor, call: Call) -> dict[str, Any]:
    _path(ctx)
    name = call.path["name"]
    if not HISTORY_NAME.match(name):  # no path traversal: only our own file names
        raise not_found("その版", "That version")
    try:
        raw = await asyncio.to_thread((_history(ctx) / name).read_bytes)
    except FileNotFoundError:
        raise not_found("その版", "That version") from None
    text, hidden = redact(_text(raw))
    return {"name": name, "sha256": sha256(raw), "yaml": text, "redacted": hidden}


# --------------------------------------------------------------------------- declarations

_CHECK_RESPONSE = {"type": "object", "required": ["ok", "sha256", "errors", "warnings", "tests",
                                                  "diff"],
                   "properties": {
                       "ok": {"type": "boolean"}, "sha256": {"type": "string"},
                       "errors": {"type": "array", "items": {
                           "type": "object", "required": ["line", "field", "message_ja",
                                                          "message_en"],
                           "properties": {"line": {"type": "integer"},
                                          "field": {"type": "string"},
                                          "message_ja": {"type": "string"},
                                          "message_en": {"type": "string"}}}},
                       "warnings": {"type": "array", "items": {"type": "string"}},
                       "guardrails": {"type": "array", "items": {"type": "string"}},
                       "tests": {"type": "object", "properties": {
                           "file": {"type": ["string", "null"]},
                           "passed": {"type": "integer"},
                           "failed": {"type": "array", "items": {"type": "object"}}}},
                       "diff": {"type": "string"}, "diff_truncated": {"type": "boolean"},
                       "restart_needed": {"type": "array", "items": {"type": "string"}},
                       "base_sha256": {"type": "string"}, "stale": {"type": "boolean"}}}

register(
    Operation(
        id="config.get", method="GET", path="/config", roles=READERS,
        summary_ja="設定ファイル（本文・SHA-256・ガードレール・警告・ルートとポリシーの一覧）",
        summary_en="The configuration file: text, digest, guardrails, warnings, routes and "
                   "policies",
        handler=get_config, tag="config",
        response={"type": "object", "required": ["path", "sha256", "yaml", "live_sha256"],
                  "properties": {"path": {"type": "string"}, "sha256": {"type": "string"},
                                 "yaml": {"type": ["string", "null"]},
                                 "redacted": {"type": "array", "items": {"type": "string"}},
                                 "live_sha256": {"type": "string"},
                                 "in_force": {"type": "boolean"},
                                 "routes": {"type": "array"}, "policies": {"type": "array"}}}),
    Operation(
        id="config.check", method="POST", path="/config/check", roles=READERS,
        summary_ja="設定案を検査する（スキーマ・ガードレール・ポリシーテスト・差分）。保存しない",
        summary_en="Check a proposed configuration (schema, guardrails, policy tests, diff) "
                   "without saving it",
        handler=check_config, tag="config",
        body={"type": "object", "required": ["yaml"], "additionalProperties": False,
              "properties": {"yaml": _TEXT, "base_sha256": _SHA}},
        response=_CHECK_RESPONSE),
    Operation(
        id="config.apply", method="PUT", path="/config", roles=SUPERADMIN_ONLY,
        summary_ja="設定を検査して保存し、再読み込みで適用する（監査記録あり）",
        summary_en="Check, save and apply the configuration through the reload (audited)",
        handler=apply_config, tag="config", also=(202,),
        body={"type": "object", "required": ["yaml", "base_sha256"],
              "additionalProperties": False,
              "properties": {"yaml": _TEXT, "base_sha256": _SHA,
                             "comment": {"type": "string", "maxLength": 1000}}},
        response={"type": "object", "required": ["changed", "reload", "sha256"],
                  "properties": {"changed": {"type": "boolean"},
                                 "reload": {"enum": ["applied", "pending", "unchanged"]},
                                 "sha256": {"type": "string"},
                                 "previous_sha256": {"type": "string"},
                                 "history": {"type": ["string", "null"]},
                                 "warnings": {"type": "array", "items": {"type": "string"}}}}),
    Operation(
        id="config.history", method="GET", path="/config/history", roles=READERS,
        summary_ja="保存されている以前の設定ファイルの一覧", summary_en="Kept earlier versions",
        handler=list_history, tag="config",
        response={"type": "object", "required": ["versions"],
                  "properties": {"versions": {"type": "array", "items": {
                      "type": "object", "required": ["name", "saved_at"],
                      "properties": {"name": {"type": "string"},
                                     "saved_at": {"type": "string"},
                                     "size": {"type": "integer"},
                                     "sha256_prefix": {"type": "string"}}}},
                                 "keep": {"type": "integer"}}}),
    Operation(
        id="config.version", method="GET", path="/config/history/{name}", roles=READERS,
        summary_ja="以前の設定ファイル 1 版", summary_en="One kept earlier version",
        handler=get_version, tag="config",
        path_params={"name": {"type": "string", "pattern": HISTORY_NAME.pattern}},
        response={"type": "object", "required": ["name", "sha256", "yaml"],
                  "properties": {"name": {"type": "string"}, "sha256": {"type": "string"},
                                 "yaml": {"type": ["string", "null"]},
                                 "redacted": {"type": "array", "items": {"type": "string"}}}}),
)
