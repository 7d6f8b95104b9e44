"""The JMAP layer: RFC 9219 Email/get, Email/query filters and Email/changes,
the protocol and the HTTP service."""

from __future__ import annotations

from smime_milter.jmap.http import listen_argument, serve
from smime_milter.jmap.methods import SmimeJmap, capabilities
from smime_milter.jmap.protocol import JmapProtocol, RequestError

__all__ = [
    "JmapProtocol", "RequestError", "SmimeJmap", "capabilities", "listen_argument", "serve"
]
