"""A milter-protocol relay between Postfix and a milter that can kill the milter
at an exact point of a conversation.

Killing a milter "at some time while mail flows" only sometimes catches a
message in flight.  The relay instead watches the packets Postfix sends (the
milter protocol frames each one as a 4-byte big-endian length, a command byte
and its data) and, when the milter answers the *kill_at*-th end-of-body command
(``E``), calls ``kill`` before a byte of that answer reaches Postfix, then drops
both connections.  So that message was examined by the milter, which died
before Postfix learnt its verdict: exactly the moment at which mail could be
lost or delivered twice.  :attr:`MilterRelay.killed` is set once that happened,
and :attr:`MilterRelay.killed_subject` names that message.

    with MilterRelay(directory / "relay.sock", daemon.socket, kill=daemon.kill,
                     kill_at=5) as relay:
        mta = postfix(milter=relay.postfix_socket)
        ...
        relay.killed.wait(60)
"""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from tests.support.daemon import POSTFIX_GROUP
from tests.support.postfix import make_traversable

END_OF_BODY = ord("E")  # SMFIC_BODYEOB
HEADER = ord("L")  # SMFIC_HEADER: name NUL value NUL


class _Conversation:
    """One Postfix connection and its upstream connection to the milter."""

    def __init__(self, relay: MilterRelay, downstream: socket.socket) -> None:
        self.relay = relay
        self.downstream = downstream
        self.upstream: socket.socket | None = None
        self.doomed = False
        #: The Subject of the message in flight, as Postfix passed it on.
        self.subject: str | None = None

    def run(self) -> None:
        try:
            self.upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.relay._sockets.append(self.upstream)
            self.upstream.connect(str(self.relay.milter_socket))
        except OSError:  # the milter is down: Postfix sees the connection drop
            self.close()
            return
        replies = threading.Thread(target=self._relay_replies, daemon=True)
        replies.start()
        self._relay_commands()
        replies.join()

    def _relay_commands(self) -> None:
        """Postfix -> milter, packet by packet, noting end-of-body commands."""
        buffer = b""
        while chunk := self._receive(self.downstream):
            buffer += chunk
            while len(buffer) >= 5:
                (length,) = struct.unpack("!I", buffer[:4])
                if len(buffer) < 4 + length:
                    break
                packet, buffer = buffer[:4 + length], buffer[4 + length:]
                if length and packet[4] == HEADER:
                    name, _, rest = packet[5:].partition(b"\0")
                    if name.lower() == b"subject":
                        self.subject = rest.rstrip(b"\0").decode(errors="replace").strip()
                if length and packet[4] == END_OF_BODY:
                    self.doomed = self.doomed or self.relay._count_end_of_body()
                if not self._send(self.upstream, packet):
                    self.close()
                    return
        self.close()

    def _relay_replies(self) -> None:
        """milter -> Postfix, unless this conversation is the one to kill."""
        assert self.upstream is not None
        while chunk := self._receive(self.upstream):
            if self.doomed:
                self.relay._kill(self.subject)
                break
            if not self._send(self.downstream, chunk):
                break
        self.close()

    @staticmethod
    def _receive(sock: socket.socket) -> bytes:
        """The next bytes from *sock*; empty at its end or on an error."""
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    @staticmethod
    def _send(sock: socket.socket | None, data: bytes) -> bool:
        try:
            assert sock is not None
            sock.sendall(data)
            return True
        except OSError:
            return False

    def close(self) -> None:
        for sock in (self.downstream, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class MilterRelay:
    """Listens on *path* for Postfix; relays every connection to *milter_socket*."""

    def __init__(self, path: Path, milter_socket: Path, *, kill: Callable[[], object],
                 kill_at: int) -> None:
        self.path = path
        self.milter_socket = milter_socket
        self.kill_at = kill_at
        self.killed = threading.Event()
        #: The Subject of the message whose answer the kill cut off.
        self.killed_subject: str | None = None
        self.end_of_body_count = 0
        self._kill_function = kill
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []

    @property
    def postfix_socket(self) -> str:
        return f"unix:{self.path}"

    def _count_end_of_body(self) -> bool:
        """Count one end-of-body command; True for the one whose answer kills."""
        with self._lock:
            self.end_of_body_count += 1
            return self.end_of_body_count == self.kill_at

    def _kill(self, subject: str | None) -> None:
        self.killed_subject = subject
        self._kill_function()
        self.killed.set()

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        make_traversable(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        # smtpd runs as user and group postfix: group access, as the milter's own
        # socket gets it, not a socket open to every user.
        os.chown(self.path, -1, grp.getgrnam(POSTFIX_GROUP).gr_gid)
        os.chmod(self.path, 0o660)
        listener.listen(256)
        self._listener = listener
        accepter = threading.Thread(target=self._accept, daemon=True)
        accepter.start()
        self._threads.append(accepter)

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:  # closed by stop()
                return
            self._sockets.append(downstream)
            worker = threading.Thread(target=_Conversation(self, downstream).run, daemon=True)
            worker.start()
            self._threads.append(worker)

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(10)
        for sock in self._sockets:
            sock.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> MilterRelay:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
