"""The connector: tunnels that closed networks dial out to the gateway through.

`frames` (wire format) and `protocol` (the sans-IO `Connection`) know no sockets; `channel`
is the thin asyncio shell that runs one tunnel over any asyncio stream. The agent that dials
out and the gateway's broker come next (docs/connector.md).
"""

from sekisho.connector.frames import ErrorCode, Role, StreamKind
from sekisho.connector.protocol import Connection, LocalProtocolError

__all__ = ["Connection", "ErrorCode", "LocalProtocolError", "Role", "StreamKind"]
