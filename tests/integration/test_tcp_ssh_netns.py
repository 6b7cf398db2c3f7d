"""`ssh` through `sekisho tcp` into a closed network, and revocation cutting the live session.

The "internal" namespace (tests/integration/test_connector_netns.py) runs Debian's OpenSSH
server (`sshd -D` on a high port, test host key, one authorised test key, no PAM) and a
connector agent; the gateway's namespace has no route to it. The staff side is real too: the
CLI credential comes from the browser flow (`/.sekisho/cli/authorize` → code → token), then
`sekisho tcp` (a process) listens on loopback and `ssh` (OpenSSH's client) connects to it.
Needs root, `ip netns` and /usr/sbin/sshd; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from connector.broker_kit import ConnectorGateway, connected, staff, wait_for
from sekisho.identity.cli_login import challenge_of, new_verifier
from sekisho.storage import sessions as session_store
from sekisho.storage import users
from sekisho.storage.database import create_database_engine

from .harness import SEKISHO, EchoUpstream, free_port
from .test_connector_netns import SKIP as NETNS_SKIP
from .test_connector_netns import Internal, internal  # noqa: F401 (the fixture)

SSHD = "/usr/sbin/sshd"
SKIP = NETNS_SKIP or ("" if Path(SSHD).exists() and shutil.which("ssh") else
                      "OpenSSH (openssh-server, openssh-client) is not installed: "
                      "scripts/test-deps installs it")
pytestmark = [pytest.mark.skipif(bool(SKIP), reason=SKIP or "-"), pytest.mark.slow]

SSH_HOST = "ssh.localhost"


def start_sshd(tmp: Path, network: Internal, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    """sshd inside the namespace; returns it and the client's private key."""
    keys = tmp / "ssh"
    keys.mkdir(mode=0o700)
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)],
                       check=True, capture_output=True)
    (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
    config = keys / "sshd_config"
    config.write_text(f"""\
Port {port}
ListenAddress {network.server_address}
HostKey {keys / 'host'}
AuthorizedKeysFile {keys / 'authorized_keys'}
PidFile {keys / 'sshd.pid'}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
""")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    log = (tmp / "sshd.log").open("wb")
    process = subprocess.Popen([*network.exec(), SSHD, "-D", "-e", "-f", str(config)],
                               stdout=log, stderr=log)
    return process, keys / "client"


def cli_credential(gateway: ConnectorGateway) -> str:
    """The browser half of `sekisho login`, then the CLI's exchange."""
    browser = staff(gateway)
    verifier, state, port = new_verifier(), secrets.token_urlsafe(24), free_port()
    query = urlencode({"port": port, "state": state, "challenge": challenge_of(verifier)})
    page = browser.get(SSH_HOST, f"/.sekisho/cli/authorize?{query}")
    if page.status == 302:  # signed in on another host: the cookie is per host
        browser.signin(SSH_HOST, "tanaka")
        page = browser.get(SSH_HOST, f"/.sekisho/cli/authorize?{query}")
    assert page.status == 200, page.body[:300]
    csrf = re.search(rb'name="csrf" value="([^"]+)"', page.body)
    assert csrf
    form = urlencode({"csrf": csrf.group(1).decode(), "port": port, "state": state,
                      "challenge": challenge_of(verifier), "decision": "allow"})
    answer = browser.request("POST", SSH_HOST, "/.sekisho/cli/authorize", body=form.encode())
    where = urlsplit(answer.header("location") or "")
    assert (answer.status, where.hostname, where.port) == (303, "127.0.0.1", port)
    code = parse_qs(where.query)["code"][0]
    token = browser.request("POST", SSH_HOST, "/.sekisho/cli/token",
                            body=json.dumps({"code": code, "verifier": verifier}).encode(),
                            headers={"Content-Type": "application/json"})
    assert token.status == 200, token.body
    return str(token.json()["credential"])


def ssh_command(key: Path, port: int, *command: str) -> list[str]:
    return ["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR", "root@127.0.0.1", *command]


def test_ssh_through_sekisho_tcp_and_revocation_cuts_it(
        tmp_path: Path, internal: Internal) -> None:  # noqa: F811
    ssh_port = 22000 + secrets.randbelow(2000)
    sshd, key = start_sshd(tmp_path, internal, ssh_port)
    upstream = EchoUpstream()
    gateway = ConnectorGateway(tmp_path, upstream, listen_host=internal.gateway_address,
                               destination=f"{internal.server_address}:{ssh_port}")
    text = gateway.config.read_text(encoding="utf-8").replace("connector:\n  listen:", f"""\
  - id: ssh
    title: 内部サーバー (SSH)
    from: https://{SSH_HOST}/
    to: connector:lgwan-dc/{internal.server_address}:{ssh_port}
    segment: internet
    policy: staff
    mode: tcp
connector:
  listen:""")
    gateway.config.write_text(text, encoding="utf-8")
    tcp: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: subprocess.run(
            [*internal.exec(), sys.executable, "-c",
             f"import socket; socket.create_connection(('{internal.server_address}', "
             f"{ssh_port}), timeout=1)"], capture_output=True, check=False).returncode == 0,
            what="sshd inside the namespace")
        with pytest.raises(OSError):  # the boundary: no way in from the gateway's side
            socket.create_connection((internal.server_address, ssh_port), timeout=2).close()
        gateway.provision()
        gateway.start()
        token, pin = gateway.token()
        gateway.agent(tmp_path / "agent", token=token, pin=pin, prefix=internal.exec())
        engine = create_database_engine(f"sqlite:///{tmp_path}/sekisho.db")
        try:
            wait_for(lambda: connected(engine) == 1, what="the tunnel from inside")
        finally:
            engine.dispose()

        home = tmp_path / "home"
        (home / "sekisho").mkdir(parents=True, mode=0o700)
        origin = f"https://127.0.0.1:{gateway.port}"
        (home / "sekisho" / "credentials.json").write_text(json.dumps({
            origin: {"credential": cli_credential(gateway)}, "default": origin}))
        local = free_port()
        cert = tmp_path / "data" / "tls" / "self-signed.crt"
        tcp = subprocess.Popen(
            [*SEKISHO, "tcp", SSH_HOST, "--listen", f"127.0.0.1:{local}", "--gateway",
             f"https://127.0.0.1:{gateway.port}", "--ca-file", str(cert)],
            env={**os.environ, "XDG_CONFIG_HOME": str(home)},
            stdout=subprocess.PIPE, stderr=(tmp_path / "tcp.log").open("wb"))
        assert tcp.stdout is not None
        assert b"listening on" in tcp.stdout.readline()

        ran = subprocess.run(ssh_command(key, local, "echo", "関所を通過"), capture_output=True,
                             timeout=30, check=False)
        assert ran.returncode == 0, ran.stderr
        assert "関所を通過" in ran.stdout.decode()

        # A live session (a shell waiting on its input), then the user's sessions revoked.
        live = subprocess.Popen(ssh_command(key, local, "cat"), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert live.stdin is not None and live.stdout is not None
        live.stdin.write(b"still here\n")
        live.stdin.flush()
        assert live.stdout.readline() == b"still here\n"
        time.sleep(0.5)  # registered and checked once (the check at registration)
        # Revoked by another process's transaction (as `sekisho session revoke` does): only
        # the change feed tells the gateway.
        engine = create_database_engine(f"sqlite:///{tmp_path}/sekisho.db")
        try:
            user = users.require_user(engine, "tanaka")
            assert session_store.revoke_user(engine, user.id, datetime.now(UTC), "admin")
            revoked_at = time.monotonic()
        finally:
            engine.dispose()
        live.wait(5)
        cut_after = time.monotonic() - revoked_at
        print(f"\nSSH session cut {cut_after:.3f} s after the revocation committed")
        assert cut_after < 1.0
        # And the revoked credential opens nothing new.
        again = subprocess.run(ssh_command(key, local, "true"), capture_output=True,
                               timeout=30, check=False)
        assert again.returncode != 0
    finally:
        if tcp is not None:
            tcp.terminate()
            tcp.wait(5)
        gateway.stop()
        sshd.terminate()
        sshd.wait(5)
        upstream.close()
