"""A TCP proxy on loopback that can lose a reply after the server has acted on a request.

``FaultProxy(host, port)`` forwards every connection to ``host:port``. After
:meth:`FaultProxy.lose_reply_after` is armed with two byte markers, the first connection
whose client sends ``first`` and then ``then`` (for a call in autocommit mode, or over
HTTP, the idempotency key twice: the request that carries it) gets that request forwarded,
and the server's answer to it thrown away with both sockets closed: the server committed,
the client never heard. It may be armed several times over (each pair of markers loses
one reply), before or while clients send. Armed with ``then_refuse``, the proxy also stops
listening once that reply is lost: the client's retry finds the server gone.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class FaultProxy:
    """Forwards TCP connections; loses one chosen reply when armed."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # so the accept loop notices a stop
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed: list[tuple[bytes, bytes, bool]] = []
        self.dropped = 0
        self._stopping = False
        self._accepting = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._accepting.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping = True
        self._listener.close()
        self._accepting.join(timeout=5)

    def lose_reply_after(self, first: bytes, then: bytes, *, then_refuse: bool = False) -> None:
        """Arm: lose the reply to the request in which ``then`` follows ``first`` (and
        refuse every connection after it, with ``then_refuse``)."""
        with self._lock:
            self._armed.append((first, then, then_refuse))

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(self._target)
            _Link(self, client, upstream).start()

    def _claim(self, seen: bytes) -> bool:
        """Whether a connection that has sent ``seen`` takes the armed fault."""
        with self._lock:
            for armed in self._armed:
                first, then, refuse = armed
                position = seen.find(first)
                if position >= 0 and seen.find(then, position) >= 0:
                    self._armed.remove(armed)
                    self.dropped += 1
                    if refuse:
                        self._listener.close()  # new connections are refused from now on
                    return True
            return False


class _Link:
    """One proxied connection: two pumps, and the decision to lose a reply."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket):
        self._proxy = proxy
        self._client = client
        self._upstream = upstream
        self._seen = b""
        self._doomed = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._requests, daemon=True).start()
        threading.Thread(target=self._replies, daemon=True).start()

    def _requests(self) -> None:
        try:
            while data := self._client.recv(65536):
                self._seen = (self._seen + data)[-65536:]
                if self._proxy._claim(self._seen):
                    self._doomed.set()
                self._upstream.sendall(data)
        except OSError:
            pass
        finally:
            self._close()

    def _replies(self) -> None:
        try:
            while data := self._upstream.recv(65536):
                if self._doomed.is_set():
                    break  # the server has answered: lose the answer
                self._client.sendall(data)
        except OSError:
            pass
        finally:
            self._close()

    def _close(self) -> None:
        for sock in (self._client, self._upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
