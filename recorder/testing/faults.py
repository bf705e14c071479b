"""Fault injection for backends: make a real server "go away" and come back.

:class:`TcpProxy` forwards a local port to a real server (PostgreSQL, Redis,
anything over TCP). Point the code under test at the proxy, then call
:meth:`TcpProxy.cut` to drop every connection and refuse new ones, exactly as a
crashed or restarted server looks to a client, and :meth:`TcpProxy.restore` to
let clients in again on the same port. The shared server itself is never
touched, so other tests using it carry on undisturbed.

Example
-------
>>> from recorder.adapters.sql import SQLEventBuffer
>>> with TcpProxy("127.0.0.1", 5432) as proxy:                    # doctest: +SKIP
...     buffer = SQLEventBuffer(proxy.url_for("postgresql://postgres@127.0.0.1:5432/app"))
...     buffer.record("e1", {"envelope_id": "e1", "type": "events_api"})
...     proxy.cut()      # the database "crashes": calls raise StorageUnavailable
...     proxy.restore()  # it is back: the next call succeeds on the same buffer
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

__all__ = ["TcpProxy"]

_CHUNK = 64 * 1024
# How often the accept loop looks whether it should stop; accepting itself is
# immediate (select wakes up as soon as a client connects).
_POLL_SECONDS = 0.05


class TcpProxy:
    """A threaded TCP proxy to a real server, which a test can cut and restore.

    Parameters
    ----------
    target_host, target_port
        The real server to forward to.
    listen_host, listen_port
        Where the proxy listens; port 0 picks a free port (see :attr:`port`).
        The port stays the same across :meth:`cut` and :meth:`restore`.

    Notes
    -----
    While cut, connecting to the proxy's port is refused (``ECONNREFUSED``)
    and every connection that was open has been closed, so clients see the
    server go away at once instead of waiting for a timeout. The proxy starts
    accepting as soon as it is created; use it as a context manager, or call
    :meth:`close` when done.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        self.accepted = 0
        """How many client connections the proxy has accepted so far."""
        self.port = self._listen(listen_port)
        """The port the proxy listens on (fixed for the proxy's lifetime)."""

    # -- public API

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` for clients to connect to."""
        return (self.listen_host, self.port)

    @property
    def is_cut(self) -> bool:
        """True between :meth:`cut` and :meth:`restore`."""
        with self._lock:
            return self._listener is None

    @property
    def live_connections(self) -> int:
        """How many client connections are being forwarded right now."""
        with self._lock:
            return len(self._links)

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's.

        Works for any ``scheme://[user[:password]@]host[:port]/...`` URL:
        ``postgresql://``, ``postgresql+psycopg://``, ``redis://``. User,
        password, path and query are kept.
        """
        parts = urlsplit(url)
        userinfo, _, _ = parts.netloc.rpartition("@")
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        netloc = f"{userinfo}@{host}:{self.port}" if userinfo else f"{host}:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def cut(self) -> None:
        """Close every live connection and refuse new ones until :meth:`restore`.

        Idempotent. Returns once the port refuses connections.
        """
        self._stop_accepting()
        with self._lock:
            links = list(self._links)
            self._links.clear()
        for link in links:
            link.close()

    def restore(self) -> None:
        """Accept connections again, on the same port. Idempotent."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the proxy is closed")
            if self._listener is not None:
                return
        self._listen(self.port)

    def close(self) -> None:
        """Stop the proxy for good: as :meth:`cut`, and release the port."""
        with self._lock:
            self._closed = True
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "cut" if self.is_cut else "forwarding"
        return (
            f"TcpProxy({self.listen_host}:{self.port} -> "
            f"{self.target_host}:{self.target_port}, {state})"
        )

    # -- internals

    def _listen(self, port: int) -> int:
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        # Rebinding the same port right after cut() must not wait for TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.listen_host, port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        stop = threading.Event()
        acceptor = threading.Thread(
            target=self._accept_loop,
            args=(listener, stop),
            name=f"TcpProxy-accept-{listener.getsockname()[1]}",
            daemon=True,
        )
        with self._lock:
            self._listener = listener
            self._stop = stop
            self._acceptor = acceptor
        acceptor.start()
        return int(listener.getsockname()[1])

    def _stop_accepting(self) -> None:
        with self._lock:
            listener, acceptor, stop = self._listener, self._acceptor, self._stop
            self._listener = None
            self._acceptor = None
        if listener is None:
            return
        stop.set()
        if acceptor is not None:
            acceptor.join()
        # Closed only after the loop has let go of it, so no accept races the close.
        listener.close()

    def _accept_loop(self, listener: socket.socket, stop: threading.Event) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            while not stop.is_set():
                if not selector.select(_POLL_SECONDS):
                    continue
                try:
                    client, _ = listener.accept()
                except OSError:
                    continue
                if stop.is_set():
                    _abort(client)
                    break
                self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection((self.target_host, self.target_port), timeout=5)
        except OSError:
            # The real server is down: pass that on as a refused connection.
            _abort(client)
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(client, upstream, self._forget)
        with self._lock:
            self._links.add(link)
            self.accepted += 1
        link.start()

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)


class _Link:
    """One client connection and its upstream twin: one thread per direction.

    Two threads rather than one select loop, so a side that stops reading
    (its buffers full) never stalls the other direction: a large pipeline
    whose replies flow back while requests still flow out cannot deadlock.
    """

    def __init__(
        self,
        client: socket.socket,
        upstream: socket.socket,
        on_done: Callable[[_Link], None],
    ) -> None:
        self._client = client
        self._upstream = upstream
        self._on_done = on_done
        self._lock = threading.Lock()
        self._running = 2
        self._reset = False
        self._threads = [
            threading.Thread(
                target=self._pump, args=(source, sink), name="TcpProxy-link", daemon=True
            )
            for source, sink in ((client, upstream), (upstream, client))
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        """Drop both sides at once and wait until the pump threads have stopped."""
        for sock in (self._client, self._upstream):
            # shutdown wakes a thread blocked in recv or sendall; close alone would not.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        clean = False
        try:
            while data := source.recv(_CHUNK):
                sink.sendall(data)
            # An orderly end of one direction is passed on as such (half close).
            sink.shutdown(socket.SHUT_WR)
            clean = True
        except OSError:
            pass
        finally:
            if not clean:
                # A reset or a cut: the other direction ends too.
                for sock in (self._client, self._upstream):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            self._finished(reset=not clean)

    def _finished(self, *, reset: bool) -> None:
        with self._lock:
            self._running -= 1
            self._reset = self._reset or reset
            last = self._running == 0
        if not last:
            return
        for sock in (self._client, self._upstream):
            if self._reset:
                _abort(sock)
            else:
                # Both sides said goodbye: a plain close, so nothing in flight is dropped.
                with contextlib.suppress(OSError):
                    sock.close()
        self._on_done(self)


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` with a reset, the way a vanished server's socket behaves."""
    with contextlib.suppress(OSError):
        # Linger on with a zero timeout: close() sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
