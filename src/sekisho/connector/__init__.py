"""The connector: tunnels that closed networks dial out to the gateway through.

`frames` (wire format) and `protocol` (the sans-IO `Connection`) know no sockets; `channel`
is the thin asyncio shell that runs one tunnel over any asyncio stream. Around it: `agent`
(dials out from the closed network, enforces the allow-list), `enrolment` and `endpoint`
(one-time token → connector certificate), `broker` (the gateway's end: registry check on
every handshake, balancing, revocation) and `relay` (workers reach the tunnels through the
master's Unix socket). See docs/connector.md.
"""

from sekisho.connector.frames import ErrorCode, Role, StreamKind
from sekisho.connector.protocol import Connection, LocalProtocolError

__all__ = ["Connection", "ErrorCode", "LocalProtocolError", "Role", "StreamKind"]
