"""The client connection's own trace: a connection cut before its first request is logged."""

from __future__ import annotations

import logging
import socket
import struct
import time

import pytest

from .conftest import GatewayUnderTest

LOST = "connection lost before a request"


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0) instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _lost(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == LOST]


def test_a_connection_reset_after_tls_and_before_a_request_is_logged(
        gw_tls: GatewayUnderTest, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sekisho.gateway")
    tls = gw_tls.connect()  # the handshake is done: the gateway made its connection
    time.sleep(0.2)
    _reset(tls)
    deadline = time.monotonic() + 5
    while not _lost(caplog):
        assert time.monotonic() < deadline, "the reset connection was not logged"
        time.sleep(0.02)
    fields = _lost(caplog)[0].fields  # type: ignore[attr-defined]
    assert fields["peer"] == "127.0.0.1" and fields["error"]


def test_a_quiet_close_or_a_reset_after_a_request_is_not(
        gw_tls: GatewayUnderTest, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sekisho.gateway")
    quiet = gw_tls.connect()  # a health check's handshake, then close_notify and FIN
    quiet.settimeout(0.3)
    with pytest.raises(TimeoutError):  # read what the server sends after the handshake
        quiet.recv(1)  # (TLS 1.3 session tickets): unread, the close would be a reset
    quiet.close()
    served = gw_tls.connect()
    served.sendall(b"GET / HTTP/1.1\r\nHost: public.localhost\r\n\r\n")
    assert served.recv(64).startswith(b"HTTP/1.1 200")
    _reset(served)  # a browser dropping a kept-alive connection
    time.sleep(0.5)
    assert not _lost(caplog)
    assert gw_tls.request(host="public.localhost")[0] == 200
