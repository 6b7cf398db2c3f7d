"""The device side of enrolment: make a key here, send only a CSR, store what comes back.

Rule: the private key is generated on the device and never leaves it; the request carries
the CSR (public key + proof of possession), the code and names, nothing else. Files are
written with O_EXCL|O_NOFOLLOW, the key and the PKCS#12 bundle 0600 from their first byte,
in a 0700 directory: a symlink planted in the directory cannot redirect a write, and no
other local user can read the key at any moment. An existing enrolment is never overwritten.
TLS to the gateway is always verified (a CA file or the system store); switching verification
off is allowed only for a loopback gateway (tests, a gateway on this machine).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from sekisho.errors import SekishoError

KEY_FILE = "device.key"
CERT_FILE = "device.pem"
CHAIN_FILE = "chain.pem"
P12_FILE = "device.p12"
ENROL_PATH = "/.sekisho/devices/enroll"


class DeviceClientError(SekishoError):
    code = "device-enrol-failed"
    status = 400


@dataclass(frozen=True, slots=True)
class Enrolled:
    device_id: str
    directory: Path
    key: Path
    certificate: Path
    chain: Path
    pkcs12: Path


def make_key_and_csr(name: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A fresh EC P-256 key and a CSR signed with it (the CA keeps only the public key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64] or "-")]))
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM)


def check_gateway(url: str, *, insecure: bool) -> str:
    """The enrolment URL for `url`; https only, and `insecure` only on loopback."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise DeviceClientError("ゲートウェイの URL は https:// で始めてください / the gateway "
                                "URL must be https://", code="device-gateway-url")
    if insecure and not _loopback(parts.hostname):
        # Without verification anyone on the path could hand out a certificate from their
        # own CA and read the enrolment code (man in the middle).
        raise DeviceClientError("--insecure は 127.0.0.1 のゲートウェイにだけ使えます / "
                                "--insecure is allowed only for a loopback gateway",
                                code="device-insecure")
    return f"https://{parts.netloc}{ENROL_PATH}"


def enrol(
    gateway: str, code: str, name: str, *, directory: Path, inventory_id: str = "",
    cafile: str | None = None, insecure: bool = False, p12_password: bytes,
    timeout: float = 30.0,
) -> Enrolled:
    """Enrol this device: key + CSR here, POST, then write key, certificate, chain, PKCS#12."""
    url = check_gateway(gateway, insecure=insecure)
    paths = [directory / f for f in (KEY_FILE, CERT_FILE, CHAIN_FILE, P12_FILE)]
    if any(p.exists() or p.is_symlink() for p in paths):
        raise DeviceClientError(f"この端末は既に登録されています / already enrolled: {directory} "
                                "(上書きしません / refusing to overwrite)",
                                code="device-exists")
    if not p12_password:
        raise DeviceClientError("PKCS#12 のパスワードが空です / the PKCS#12 password is empty",
                                code="device-p12-password")
    key, csr = make_key_and_csr(name)
    verify = _tls(cafile, insecure)
    data = post_json(url, {"code": code, "csr": csr.decode("ascii"), "name": name,
                           "inventory_id": inventory_id},
                     verify=verify, timeout=timeout,
                     refused="登録が拒否されました / enrolment refused")
    cert, chain = _received(data, key)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    pem = serialization.Encoding.PEM
    _write(paths[0], key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(paths[1], cert.public_bytes(pem), 0o644)
    _write(paths[2], b"".join(c.public_bytes(pem) for c in chain), 0o644)
    bundle = pkcs12.serialize_key_and_certificates(
        name.encode("utf-8")[:64], key, cert, chain,
        serialization.BestAvailableEncryption(p12_password))
    _write(paths[3], bundle, 0o600)
    return Enrolled(str(data["device_id"]), directory, *paths)


def _received(data: dict[str, object], key: ec.EllipticCurvePrivateKey
              ) -> tuple[x509.Certificate, list[x509.Certificate]]:
    try:
        cert = x509.load_pem_x509_certificate(str(data["certificate"]).encode("ascii"))
        chain = x509.load_pem_x509_certificates(str(data["chain"]).encode("ascii"))
    except (KeyError, ValueError, UnicodeEncodeError):
        raise DeviceClientError("ゲートウェイの応答を読めません / malformed gateway answer",
                                code="device-answer") from None
    # The certificate must be for the key we made: anything else is not ours to install.
    if cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise DeviceClientError("証明書の鍵が一致しません / the certificate is not for this "
                                "device's key", code="device-answer")
    return cert, chain


def post_json(url: str, body: dict[str, object], *, verify: ssl.SSLContext | bool,
              timeout: float, refused: str) -> dict[str, object]:
    """POST `body` to the gateway; its JSON answer, or a DeviceClientError naming the gateway's
    error code (`refused` is the ja/en prefix saying what was refused)."""
    import httpx  # only the device-side commands need an HTTP client

    try:
        response = httpx.post(url, json=body, verify=verify, timeout=timeout)
    except httpx.HTTPError as exc:
        raise DeviceClientError(f"ゲートウェイに接続できません / cannot reach the gateway: "
                                f"{type(exc).__name__}: {exc}", code="device-gateway") from None
    try:
        data = response.json()
    except ValueError:
        data = {}
    if response.status_code != 200 or not isinstance(data, dict):
        error = data.get("error", f"http-{response.status_code}") if isinstance(data, dict) \
            else f"http-{response.status_code}"
        message = data.get("message", "") if isinstance(data, dict) else ""
        raise DeviceClientError(f"{refused}: {error} {message}", code=str(error))
    return data


def tls_verification(cafile: str | None, insecure: bool) -> ssl.SSLContext | bool:
    """How to verify the gateway's TLS (shared with `devices.reporter`)."""
    return _tls(cafile, insecure)


def _tls(cafile: str | None, insecure: bool) -> ssl.SSLContext | bool:
    if insecure and not cafile:
        return False
    try:  # the CA file given, else the operating system's trust store
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise DeviceClientError(f"CA ファイルを読めません / cannot load the CA file: {cafile} "
                                f"({exc})", code="device-cafile") from None


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


INSTRUCTIONS = """\
登録が完了しました / Enrolment complete.
  端末 ID / device id:  {device_id}
  秘密鍵 / private key: {key}  (0600、端末の外に出しません / never leaves this device)
  証明書 / certificate: {certificate}
  チェーン / chain:     {chain}
  PKCS#12:              {pkcs12}

ブラウザや OS への取り込み方:
  - Windows: {pkcs12} をダブルクリック →「現在のユーザー」→ パスワードを入力して
    「個人」ストアに取り込みます (Edge / Chrome はこのストアを使います)。
  - macOS: {pkcs12} をダブルクリックして「キーチェーンアクセス」の「ログイン」に追加します。
  - Firefox: 設定 → プライバシーとセキュリティ → 証明書を表示 → あなたの証明書 → 読み込む。
  - Linux (Chrome): pk12util -d sql:$HOME/.pki/nssdb -i {pkcs12}
  ルート CA ({chain} の最後の証明書) の指紋は管理者が `sekisho ca show` で示すものと
  一致することを確認してください。

Installing it in the browser / OS store:
  - Windows: double-click {pkcs12} → "Current User" → enter the password → "Personal" store
    (Edge and Chrome use it).
  - macOS: double-click {pkcs12} and add it to the "login" keychain.
  - Firefox: Settings → Privacy & Security → View Certificates → Your Certificates → Import.
  - Linux (Chrome): pk12util -d sql:$HOME/.pki/nssdb -i {pkcs12}
  Check that the root CA's fingerprint (last certificate in {chain}) matches the one your
  administrator shows with `sekisho ca show`.
"""
