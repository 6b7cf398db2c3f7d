"""`sekisho device …`: enrolment codes and the device registry (admin), and `enroll` (device).

Admin commands work on the database like `sekisho user`; every change is appended to the
audit chain. `enroll` runs on the device itself and needs no database: it makes the key
locally, sends a CSR to the gateway and stores the result (see `devices.client`); `report`
also runs on the device and sends a signed posture report (see `devices.reporter`).
"""

from __future__ import annotations

import argparse
import getpass
import json
from datetime import timedelta
from pathlib import Path

from sekisho.cli._common import add_config_option, add_database_option, open_engine
from sekisho.cli.user import admin_name, audit_event, print_table
from sekisho.devices.client import DeviceClientError


def _admin(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_config_option(parser)
    add_database_option(parser)
    return parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("device",
                                   help="端末の登録と管理 / device enrolment and registry")
    commands = parser.add_subparsers(dest="device_command", metavar="ACTION", required=True)

    code = _admin(commands.add_parser("code", help="一回限りの登録コードを作成 / create a "
                                      "one-time enrolment code"))
    code.add_argument("user")
    code.add_argument("--ttl", default="24h", help="有効期間 / validity (default 24h, max 30d)")
    code.set_defaults(handler=run_code)

    lst = _admin(commands.add_parser("list", help="端末の一覧 / list devices"))
    lst.add_argument("--user", default=None)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(handler=run_list)

    rename = _admin(commands.add_parser("rename", help="端末名を変更 / rename a device"))
    rename.add_argument("id")
    rename.add_argument("name")
    rename.set_defaults(handler=run_rename)

    suspend = _admin(commands.add_parser("suspend", help="端末を停止 (CRL に掲載) / suspend "
                                         "a device (listed in the CRL)"))
    suspend.add_argument("id")
    suspend.add_argument("--reason", default="")
    suspend.set_defaults(handler=run_status, status="suspended")

    resume = _admin(commands.add_parser("resume", help="停止した端末を再開 (CRL から外れる) / "
                                        "resume a suspended device (leaves the CRL)"))
    resume.add_argument("id")
    resume.add_argument("--reason", default="")
    resume.set_defaults(handler=run_status, status="active")

    revoke = _admin(commands.add_parser("revoke", help="端末を失効 (取り消せません) / revoke a "
                                        "device (final)"))
    revoke.add_argument("id")
    revoke.add_argument("--reason", default="",
                        help="理由 (key_compromise などは CRL の理由になります) / reason")
    revoke.set_defaults(handler=run_status, status="revoked")

    enroll = commands.add_parser("enroll", help="この端末を登録 (端末で実行) / enrol this "
                                 "device (run on the device)")
    enroll.add_argument("--gateway", required=True, help="https://ゲートウェイ / gateway URL")
    enroll.add_argument("--code", required=True, help="登録コード / enrolment code")
    enroll.add_argument("--name", required=True, help="端末名 / device name")
    enroll.add_argument("--inventory-id", default="", help="資産管理番号 / inventory id")
    enroll.add_argument("--dir", default=str(Path("~/.sekisho/device")),
                        help="保存先 / where to store key and certificate "
                             "(default ~/.sekisho/device)")
    enroll.add_argument("--cafile", default=None,
                        help="ゲートウェイの TLS を検証する CA / CA file for the gateway's TLS "
                             "(default: the system store)")
    enroll.add_argument("--insecure", action="store_true",
                        help="TLS 検証なし (127.0.0.1 のみ) / no TLS verification (loopback only)")
    enroll.add_argument("--p12-password-file", default=None,
                        help="PKCS#12 のパスワードのファイル / file with the PKCS#12 password "
                             "(default: prompt)")
    enroll.set_defaults(handler=run_enroll)

    report = commands.add_parser("report", help="端末の状態を報告 (端末で定期実行) / send a "
                                 "signed posture report (run on the device, scheduled)")
    report.add_argument("--gateway", required=True, help="https://ゲートウェイ / gateway URL")
    report.add_argument("--dir", default=str(Path("~/.sekisho/device")),
                        help="登録済みの鍵と証明書 / enrolled key and certificate "
                             "(default ~/.sekisho/device)")
    report.add_argument("--cafile", default=None,
                        help="ゲートウェイの TLS を検証する CA / CA file for the gateway's TLS")
    report.add_argument("--insecure", action="store_true",
                        help="TLS 検証なし (127.0.0.1 のみ) / no TLS verification (loopback only)")
    report.add_argument("--edr-process", action="append", default=None, metavar="NAME",
                        help="ウイルス対策・EDR のプロセス名 (複数可) / antivirus or EDR process "
                             "name (repeatable; default: clamd, falcon-sensor, mdatp, …)")
    report.add_argument("--json", action="store_true", help="報告と応答を JSON で表示 / print "
                        "the report and the answer as JSON")
    report.set_defaults(handler=run_report)


def run_code(args: argparse.Namespace) -> int:
    from sekisho.config.values import Invalid, parse_duration
    from sekisho.devices.enrolment import EnrolmentError, create_code

    try:
        ttl = timedelta(seconds=parse_duration(args.ttl))
    except Invalid as exc:
        raise EnrolmentError(f"--ttl: {exc.ja} / {exc.en}", code="enrolment-ttl") from None
    engine = open_engine(args)
    try:
        code, event = create_code(engine, args.user, admin_name(), ttl)
        audit_event(engine, event)
    finally:
        engine.dispose()
    print(f"登録コード / enrolment code for {event.user}: {code}")
    print(f"有効期限 / expires: {event.expires_at} (一回限り / single use)")
    print("このコードは二度と表示されません / this code is not shown again")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from sekisho.storage import devices, users

    engine = open_engine(args)
    try:
        user_id = users.require_user(engine, args.user).id if args.user else None
        records = devices.list_devices(engine, user_id)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([{
            "device_id": r.device_id, "user": r.username, "name": r.name,
            "inventory_id": r.inventory_id, "status": r.status,
            "created_at": r.created_at.isoformat(), "serial": r.cert_serial,
            "not_after": r.cert_not_after.isoformat(),
            "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
            "reason": r.revoked_reason,
        } for r in records], ensure_ascii=False, indent=2))
        return 0
    fmt = "%Y-%m-%d %H:%M"
    table = [("ID", "USER", "NAME", "INVENTORY", "STATUS", "ENROLLED (UTC)", "EXPIRES (UTC)")]
    table += [(r.device_id, r.username, r.name, r.inventory_id, r.status,
               r.created_at.strftime(fmt), r.cert_not_after.strftime(fmt)) for r in records]
    print_table(table)
    return 0


def run_rename(args: argparse.Namespace) -> int:
    from sekisho.devices.enrolment import rename

    engine = open_engine(args)
    try:
        device, event = rename(engine, args.id, args.name, admin=admin_name())
        audit_event(engine, event)
    finally:
        engine.dispose()
    print(f"{device.device_id}: {device.name}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from sekisho.devices.enrolment import change_status

    engine = open_engine(args)
    try:
        device, event = change_status(engine, args.id, args.status, admin=admin_name(),
                                      reason=args.reason)
        if event is not None:
            audit_event(engine, event)
    finally:
        engine.dispose()
    if event is None:
        print(f"{device.device_id}: 変更なし / unchanged ({device.status})")
    elif device.status == "active":
        print(f"{device.device_id}: active (CRL から外れます / no longer in the CRL)")
    else:
        print(f"{device.device_id}: {device.status} (CRL に掲載 / listed in the CRL)")
    return 0


def run_enroll(args: argparse.Namespace) -> int:
    from sekisho.devices.client import INSTRUCTIONS, enrol

    password = _p12_password(args.p12_password_file)
    result = enrol(args.gateway, args.code, args.name,
                   directory=Path(args.dir).expanduser(), inventory_id=args.inventory_id,
                   cafile=args.cafile, insecure=args.insecure, p12_password=password)
    print(INSTRUCTIONS.format(device_id=result.device_id, key=result.key,
                              certificate=result.certificate, chain=result.chain,
                              pkcs12=result.pkcs12))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from sekisho.devices.collect import DEFAULT_EDR_PROCESSES
    from sekisho.devices.reporter import send_report

    sent, answer = send_report(
        args.gateway, directory=Path(args.dir).expanduser(), cafile=args.cafile,
        insecure=args.insecure, edr_processes=tuple(args.edr_process or DEFAULT_EDR_PROCESSES))
    if args.json:
        print(json.dumps({"report": sent, "answer": answer}, ensure_ascii=False, indent=2))
        return 0
    failed = ", ".join(answer.get("failed_checks", [])) or "-"
    print(f"報告しました / reported: {answer.get('device_id')} → "
          f"{answer.get('profile')} (満たさない項目 / failed checks: {failed})")
    return 0


def _p12_password(path: str | None) -> bytes:
    if path is not None:
        try:
            secret = Path(path).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise DeviceClientError(f"パスワードのファイルを読めません / cannot read the password "
                                    f"file: {path} ({exc.strerror})",
                                    code="device-p12-password") from None
    else:
        first = getpass.getpass("PKCS#12 のパスワード / PKCS#12 password: ")
        if first != getpass.getpass("もう一度 / again: "):
            raise DeviceClientError("パスワードが一致しません / the passwords differ",
                                    code="device-p12-password")
        secret = first.encode("utf-8")
    if not secret:
        raise DeviceClientError("パスワードが空です / the password is empty",
                                code="device-p12-password")
    return secret
