"""`sekisho ca init|show`: the internal certificate authority for device certificates.

The CA lives as files in the directory `devices.ca.ca_directory` resolves from `--config`
(`tls.client_ca_dir`, else `<data_dir>/ca`: the one the gateway reads and trusts); `init`
never overwrites an existing one, because a new root would orphan every device certificate
already issued.
"""

from __future__ import annotations

import argparse
import stat
from pathlib import Path

from cryptography import x509

from sekisho.cli._common import add_config_option
from sekisho.devices.ca import (
    CaError,
    CaPaths,
    ca_directory,
    ca_directory_of,
    fingerprint,
    init_ca,
    load_certificates,
)

DEFAULT_DIR = Path("./var/ca")
_CA_FIELD = ("tls", "client_ca_dir")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("ca", help="端末用の内部 CA / the internal device CA")
    commands = parser.add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    init = commands.add_parser("init", help="ルート CA と中間 CA を作成 / create the CA")
    init.add_argument("--organisation", default="Sekisho",
                      help="組織名 (証明書の O) / organisation name (default Sekisho)")
    init.add_argument("--passphrase-file", metavar="FILE",
                      help="秘密鍵を暗号化するパスフレーズのファイル / file holding the passphrase "
                           "that encrypts the private keys")
    show = commands.add_parser("show", help="CA 証明書の表示 / show the CA certificates")
    for sub in (init, show):
        sub.add_argument("--dir", metavar="DIR",
                         help="CA のディレクトリ / CA directory (default: tls.client_ca_dir, "
                              "else <data_dir>/ca from --config; without --config ./var/ca)")
        add_config_option(sub)
    init.set_defaults(handler=_init)
    show.set_defaults(handler=_show)


def _directory(args: argparse.Namespace) -> Path:
    if args.dir:
        return Path(args.dir)
    if args.config:
        return configured_directory(args.config)
    return DEFAULT_DIR


def configured_directory(config_path: str) -> Path:
    """The CA directory the configuration at `config_path` names (`ca_directory`).

    A file with `client_certificates: optional` and a `client_ca_dir` does not load until
    the CA exists there — which is what `ca init` is run to make. Only that one problem is
    set aside, and the directory is then read from the file's own `server` and `tls`
    sections; any other problem is reported as usual.
    """
    from sekisho.config import loader
    from sekisho.config.problems import InvalidConfig

    try:
        return ca_directory(loader.load_config(config_path))
    except InvalidConfig as exc:
        if not exc.problems or any(p.path != _CA_FIELD for p in exc.problems):
            raise
    from sekisho.config.build import Builder
    from sekisho.config.yamlfile import decode, read_yaml

    file = Path(config_path)
    data, lines, _ = read_yaml(decode(file.read_bytes()))
    builder = Builder(data, lines, {}, file.resolve().parent, config_path)
    return ca_directory_of(builder.server(), builder.tls())


def _passphrase(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CaError(f"パスフレーズのファイルを読めません / cannot read the passphrase file: "
                      f"{path} ({exc.strerror})", code="ca-passphrase") from None
    secret = data.rstrip(b"\r\n")
    if not secret:
        raise CaError("パスフレーズのファイルが空です / the passphrase file is empty",
                      code="ca-passphrase")
    return secret


def _init(args: argparse.Namespace) -> int:
    directory = _directory(args)
    paths = init_ca(directory, organisation=args.organisation,
                    passphrase=_passphrase(args.passphrase_file))
    root, intermediate = load_certificates(paths.directory)
    print(f"CA を作成しました / created the CA in {paths.directory}")
    _print_cert("ルート CA / root", root)
    _print_cert("中間 CA / intermediate", intermediate)
    print("ルート CA の秘密鍵 (root.key) はオフラインで保管してください / keep root.key offline")
    return 0


def _show(args: argparse.Namespace) -> int:
    paths = CaPaths.of(_directory(args))
    root, intermediate = load_certificates(paths.directory)
    print(f"CA: {paths.directory}")
    for label, cert, key in (("ルート CA / root", root, paths.root_key),
                             ("中間 CA / intermediate", intermediate, paths.intermediate_key)):
        _print_cert(label, cert)
        print(f"  鍵 / key:        {_key_state(key)}")
    return 0


def _print_cert(label: str, cert: x509.Certificate) -> None:
    print(label)
    print(f"  subject:         {cert.subject.rfc4514_string()}")
    print(f"  有効期間 / valid: {cert.not_valid_before_utc:%Y-%m-%d %H:%M} — "
          f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    print(f"  SHA-256:         {fingerprint(cert)}")


def _key_state(path: Path) -> str:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        head = path.read_bytes()[:64]
    except OSError:
        return "なし / absent (オフライン保管 / kept offline?)"
    encrypted = ("暗号化あり / encrypted" if b"ENCRYPTED" in head
                 else "暗号化なし / not encrypted")
    permissions = f"{mode:04o}" + ("" if mode & 0o077 == 0
                                   else " 警告: 他者が読めます / WARNING: readable by others")
    return f"{encrypted}, {permissions}"
