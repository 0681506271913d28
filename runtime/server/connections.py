"""The serving core: one thread watches every connection, two small pools of
workers answer the requests.

A thread per connection does not survive a flood: 15,000 idle connections were
15,000 threads, and the server answered nothing for minutes. Here a connection
costs a socket and a few hundred bytes until a whole request head has arrived:
the watcher (a selector over all sockets) buffers the head, then hands the
connection to a worker. Two lanes of workers keep cheap endpoints (/health,
/metrics, /slots, ...) from ever waiting behind generations, which hold their
worker for as long as they stream.

Limits: at most `max_connections` open at once (past it the longest-idle one is
closed to make room, so a flood of idle sockets cannot lock new clients out); a
connection silent for `timeout` seconds while no request of it is being answered
is closed; a request head larger than MAX_HEAD is refused with 431.
"""

import collections
import errno
import json
import queue
import resource
import selectors
import socket
import sys
import threading
import time

from runtime.server.errors import ApiError

MAX_HEAD = 64 << 10         # bytes of request line + headers
FDS_KEPT = 64               # file descriptors left for the model, kernels, logs


def raise_open_file_limit():
    """Raise the soft limit on open files to the hard limit; the limit we got."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def default_max_connections():
    return max(16, raise_open_file_limit() - FDS_KEPT)


class Reader:
    """The request's bytes: what the watcher buffered, then the socket. Has the
    readline/read that http.server's request parsing uses; what is left over after
    a request (a pipelined next one) goes back with the connection."""

    def __init__(self, sock, buffered):
        self.sock = sock
        self.buf = bytearray(buffered)

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def readline(self, limit=-1):
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0 and (limit < 0 or i < limit):
                return self._take(i + 1)
            if 0 <= limit <= len(self.buf):
                return self._take(limit)
            start = len(self.buf)
            if not self._fill():
                return self._take(len(self.buf))

    def read(self, n=-1):
        if n is None or n < 0:
            while self._fill():
                pass
            return self._take(len(self.buf))
        while len(self.buf) < n and self._fill():
            pass
        return self._take(min(n, len(self.buf)))

    def _take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def close(self):
        pass


class Writer:
    """wfile: every write goes straight out (sendall)."""

    def __init__(self, sock):
        self.sock = sock

    def write(self, data):
        self.sock.sendall(data)
        return len(data)

    def flush(self):
        pass

    def close(self):
        pass


class Conn:
    __slots__ = ("sock", "addr", "buf", "last", "started")

    def __init__(self, sock, addr):
        self.sock = sock
        self.addr = addr
        self.buf = b""
        self.last = time.monotonic()
        self.started = 0.0          # when its current request was handed to a worker


def head_too_large():
    body = json.dumps(ApiError(431, f"the request line and headers exceed {MAX_HEAD} bytes")
                      .body()).encode()
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"Content-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
            + body)


def head_complete(buf):
    return b"\n\r\n" in buf or b"\n\n" in buf


def request_target(buf):
    """(method, path) from the request line of a buffered head, or ("", "")."""
    line = bytes(buf[:buf.find(b"\n")]).split()
    if len(line) < 2:
        return "", ""
    return line[0].decode("latin-1"), line[1].decode("latin-1").split("?", 1)[0]


class Lane:
    """A fixed pool of worker threads fed by one queue."""

    def __init__(self, name, workers, work):
        self.jobs = queue.SimpleQueue()
        self.work = work
        self.threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
                        for i in range(workers)]
        for t in self.threads:
            t.start()

    def submit(self, conn):
        self.jobs.put(conn)

    def stop(self):
        for _ in self.threads:
            self.jobs.put(None)

    def _run(self):
        while True:
            conn = self.jobs.get()
            if conn is None:
                return
            self.work(conn)


class Listener:
    """Accepts connections on (host, port), holds the idle ones, and runs
    `answer(conn, reader, writer) -> keep_alive` for each request on a worker of the
    lane `lane_of(method, path)` ("cheap" or "work") names."""

    def __init__(self, host, port, answer, lane_of, workers, cheap_workers, timeout,
                 max_connections):
        # Several addresses, comma-separated, as llama-server's --host: one socket each,
        # all on the port the first one got.
        self.socks = []
        try:
            for name in [h.strip() for h in host.split(",") if h.strip()] or ["127.0.0.1"]:
                name = name[1:-1] if name.startswith("[") and name.endswith("]") else name
                family = socket.AF_INET6 if ":" in name else socket.AF_INET
                sock = socket.create_server((name, port), family=family, backlog=1024,
                                            reuse_port=False)
                sock.setblocking(False)
                self.socks.append(sock)
                port = sock.getsockname()[1]
        except BaseException:
            for sock in self.socks:
                sock.close()
            raise
        self.sock = self.socks[0]
        self.address = self.sock.getsockname()[:2]
        self.addresses = [sock.getsockname()[:2] for sock in self.socks]
        self.answer = answer
        self.lane_of = lane_of
        self.timeout = timeout
        self.max_connections = max_connections
        self.selector = selectors.DefaultSelector()
        self.waiting = collections.OrderedDict()    # fd -> Conn, longest idle first
        self.n_open = 0
        self.in_flight = set()                      # conns whose request is being answered
        self.lock = threading.Lock()
        self.returned = collections.deque()         # conns the workers give back
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.stopping = False
        self.lanes = {"work": Lane("http", workers, self._serve),
                      "cheap": Lane("http-cheap", cheap_workers, self._serve)}
        self.thread = None

    # ---- the watcher thread ----

    def start(self):
        for sock in self.socks:
            self.selector.register(sock, selectors.EVENT_READ, "accept")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.thread = threading.Thread(target=self._watch, name="http-watch", daemon=True)
        self.thread.start()

    def _watch(self):
        next_sweep = time.monotonic() + 1
        while not self.stopping:
            for key, _ in self.selector.select(timeout=1.0):
                if key.data == "accept":
                    self._accept(key.fileobj)
                elif key.data == "wake":
                    self._take_returned()
                else:
                    self._readable(key.data)
            now = time.monotonic()
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + 1
        self._close_all()

    def _accept(self, listening):
        for _ in range(256):
            try:
                sock, addr = listening.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if not self._evict_one():
                        return      # every connection is mid-request; the backlog waits
                    continue
                return
            if self.n_open >= self.max_connections and not self._evict_one():
                sock.close()
                continue
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            self.n_open += 1
            self._hold(Conn(sock, addr))

    def _hold(self, conn):
        """Watch an idle connection until its next request head has arrived."""
        if head_complete(conn.buf):
            self._dispatch(conn)
            return
        conn.last = time.monotonic()
        self.waiting[conn.sock.fileno()] = conn
        self.selector.register(conn.sock, selectors.EVENT_READ, conn)

    def _readable(self, conn):
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.buf += data
        conn.last = time.monotonic()
        self.waiting.move_to_end(conn.sock.fileno())
        if head_complete(conn.buf) or len(conn.buf) > MAX_HEAD:
            self._unwatch(conn)
            self._dispatch(conn)

    def _dispatch(self, conn):
        method, path = request_target(conn.buf)
        conn.started = time.monotonic()
        with self.lock:
            self.in_flight.add(conn)
        self.lanes[self.lane_of(method, path)].submit(conn)

    def _unwatch(self, conn):
        self.waiting.pop(conn.sock.fileno(), None)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass

    def _drop(self, conn):
        self._unwatch(conn)
        self._close(conn)

    def _close(self, conn):
        try:
            conn.sock.close()
        except OSError:
            pass
        self.n_open -= 1

    def _evict_one(self):
        """Close the longest-idle connection; False if none is idle."""
        if not self.waiting:
            return False
        _, conn = next(iter(self.waiting.items()))
        self._drop(conn)
        return True

    def _sweep(self, now):
        limit = now - self.timeout
        while self.waiting:
            conn = next(iter(self.waiting.values()))
            if conn.last > limit:
                break
            self._drop(conn)

    def _take_returned(self):
        try:
            while self.wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self.returned:
            conn, keep = self.returned.popleft()
            if keep and not self.stopping:
                conn.sock.setblocking(False)
                self._hold(conn)
            else:
                self._close(conn)

    def _close_all(self):
        for conn in list(self.waiting.values()):
            self._drop(conn)
        self.selector.close()
        for sock in self.socks:
            sock.close()
        self.wake_r.close()

    # ---- workers ----

    def _serve(self, conn):
        keep = False
        try:
            conn.sock.settimeout(self.timeout)
            if len(conn.buf) > MAX_HEAD and not head_complete(conn.buf[:MAX_HEAD]):
                conn.sock.sendall(head_too_large())
            else:
                reader = Reader(conn.sock, conn.buf)
                keep = self.answer(conn, reader, Writer(conn.sock))
                conn.buf = bytes(reader.buf)
        except OSError:
            keep = False
        except Exception as e:  # a bug of ours past the handler's own net: keep the worker
            sys.stderr.write(f"llamazip: request failed: {type(e).__name__}: {e}\n")
            keep = False
        finally:
            with self.lock:
                self.in_flight.discard(conn)
            self.returned.append((conn, keep))
            try:
                self.wake_w.send(b"x")
            except OSError:
                pass

    # ---- control ----

    @property
    def active(self):
        """Requests being answered (or waiting for a worker) now."""
        return len(self.in_flight)

    def active_since(self, t):
        """Requests in flight that were handed to a worker at or before `t`."""
        with self.lock:
            return sum(c.started <= t for c in self.in_flight)

    def stop(self):
        """Close the listening socket and every connection; stop the workers."""
        self.stopping = True
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass
        if self.thread is not None:
            self.thread.join(5)
        for lane in self.lanes.values():
            lane.stop()
