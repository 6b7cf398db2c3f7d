"""Wiring the broker from the configuration (called by `app`, the composition root).

The connector listener presents the gateway's own certificate (the files of `tls:`, or the
installation's self-signed one) and trusts client certificates from the internal CA
(`devices.ca.ca_directory`). Agents authenticate the gateway by the pin of that certificate's
public key, which `sekisho connector token` prints next to the token.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from sekisho.config.model import Config
from sekisho.connector.agent import public_key_pin
from sekisho.connector.broker import Broker
from sekisho.connector.endpoint import Enrolment
from sekisho.connector.relay import SOCKET_ENV, socket_path
from sekisho.devices.ca import ca_directory

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from sekisho.services import AuditSink


def listener_certificate(config: Config) -> tuple[str, str]:
    """(certificate file, key file) the connector listener presents."""
    from sekisho.app import self_signed_hosts
    from sekisho.gateway import tls

    if config.tls.enabled and not config.tls.self_signed:
        assert config.tls.cert_file and config.tls.key_file
        return config.tls.cert_file, config.tls.key_file
    return tls.self_signed(Path(config.server.data_dir), self_signed_hosts(config))


def listener_pin(config: Config) -> str:
    cert_file, _ = listener_certificate(config)
    return public_key_pin(x509.load_pem_x509_certificate(Path(cert_file).read_bytes()))


def listener_context(config: Config) -> ssl.SSLContext:
    from sekisho.gateway import tls

    cert_file, key_file = listener_certificate(config)
    context = tls.server_context(cert_file, key_file)
    # Optional, not required: a connection without a certificate may only enrol
    # (connector.endpoint); the broker refuses it anything else.
    tls.request_client_certificates(context, ca_directory(config))
    return context


async def start_broker(config: Config, engine: Engine, audit: AuditSink) -> Broker | None:
    """The broker when `connector.listen` is set (None otherwise); its Unix socket path is
    exported in the environment so the gateway's upstream pool (and forked workers) find it."""
    listen = config.connector.listen
    if listen is None:
        return None
    enrolment = Enrolment(engine, audit, ca_directory(config),
                          certificate_days=config.connector.certificate_days)
    broker = Broker(engine, audit, enrolment)
    path = socket_path(Path(config.server.data_dir))
    await broker.start(listen.host, listen.port, listener_context(config), path)
    os.environ[SOCKET_ENV] = path
    return broker
