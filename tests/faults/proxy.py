"""A loopback TCP fault proxy (threads) for the fault-injection tests.

proxy = FaultProxy(upstream_port); proxy.start()   # listens on 127.0.0.1:proxy.port
proxy.cut()    # close every open connection and refuse new ones (reset at once)
proxy.stall()  # keep connections open but forward nothing (new ones are accepted and held)
proxy.passthrough()  # forward again; stalled bytes are then delivered
proxy.close()
"""

from __future__ import annotations

import select
import socket
import threading

PASS, CUT, STALL = "pass", "cut", "stall"


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = PASS
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))  # loopback only
        self._listener.listen(128)
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._thread: threading.Thread | None = None
        self.accepted = 0
        self.cuts = 0

    # -- modes -----------------------------------------------------------------------------------
    def passthrough(self) -> None:
        self.mode = PASS

    def stall(self) -> None:
        self.mode = STALL

    def cut(self) -> None:
        """Close every open connection (RST) and refuse new ones until passthrough()."""
        self.mode = CUT
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            _hard_close(s)
        self.cuts += 1

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._accept_loop, name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            _hard_close(s)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.mode == CUT:
                _hard_close(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _hard_close(client)
                continue
            self.accepted += 1
            with self._lock:
                self._conns.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        try:
            while not self._stop.is_set():
                with self._lock:
                    alive = a in self._conns and b in self._conns
                if not alive:
                    return
                if self.mode == STALL:
                    self._stop.wait(0.02)
                    continue
                readable, _, _ = select.select([a, b], [], [], 0.05)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    peer[s].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._conns.discard(a)
                self._conns.discard(b)
            _hard_close(a)
            _hard_close(b)


def _hard_close(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
