"""`--server`: an HTTP server with OpenAI's API, llama.cpp's endpoints and a chat page.

Everything is the standard library. The serving core (connections.py) holds the
connections in one selector and hands each complete request head to a worker of a
bounded pool; cheap endpoints (/health, /metrics, /slots, ...) have a lane of their
own so they never wait behind generations. Each generation holds one of N slots
(engine.py); requests beyond the slots wait in a bounded queue, past it they get 503.

This layer is the HTTP plumbing only: reading bodies, API keys, CORS, routing,
server-sent events, draining on SIGTERM. The endpoints are in api.py and
embeddings.py. Errors come back in OpenAI's JSON shape with the right status, never
as a traceback.
"""

import hmac
import json
import os
import pkgutil
import re
import select
import signal
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

from runtime.errors import UserError
from runtime.server import anthropic, api, responses
from runtime.server.app import App
from runtime.server.connections import Listener, default_max_connections
from runtime.server.embeddings import embeddings
from runtime.server.errors import ApiError, ClientGone

_LONE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")   # where one might hide: a quick test


def _has_lone_surrogate(value):
    """Whether a parsed JSON value holds a string (or key) with an unpaired surrogate,
    which no UTF-8 encoder downstream would accept."""
    work = [value]
    while work:
        v = work.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            work.extend(v.keys())
            work.extend(v.values())
        elif isinstance(v, list):
            work.extend(v)
    return False


MAX_BODY = 8 << 20          # bytes of request body we read; larger is 413
CORS_METHODS = "GET, POST, DELETE, OPTIONS"


def origin_is_loopback(origin):
    """Whether an Origin (scheme://host[:port]) names this machine."""
    from urllib.parse import urlsplit
    try:
        host = urlsplit(origin).hostname
    except ValueError:
        return False
    return host in ("localhost", "127.0.0.1", "::1")


def cors_allowed_origin(setting, origin):
    """The Access-Control-Allow-Origin value for a request from `origin` under
    --cors-origins `setting`, or None (no CORS headers). As llama-server: * echoes the
    caller's origin (credentials are allowed), `localhost` echoes loopback origins only,
    a list echoes the origins on it; `none` turns CORS off."""
    if not setting or setting == "none":
        return None
    if setting == "*":
        return origin or "*"
    if setting == "localhost":
        return origin if origin and origin_is_loopback(origin) else None
    allowed = [o.strip() for o in setting.split(",") if o.strip()]
    return origin if origin in allowed else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llamazip"
    sys_version = ""

    @property
    def app(self):
        return self.server.app

    @classmethod
    def answer(cls, server, conn, reader, writer):
        """Answer one request read from `reader` (the serving core calls this on a
        worker); whether the connection stays open for the next one."""
        h = cls.__new__(cls)
        h.server = server
        h.request = h.connection = conn.sock
        h.client_address = conn.addr
        h.rfile, h.wfile = reader, writer
        h.close_connection = True
        h.handle_one_request()
        return not h.close_connection

    @classmethod
    def lane_of(cls, method, path):
        """The worker lane of a request: "cheap" ones never queue behind generations."""
        if len(path) > 1:
            path = path.rstrip("/")
        if method == "OPTIONS":
            return "cheap"
        name = cls.ROUTES.get(("GET" if method == "HEAD" else method, path))
        if name is None and method == "POST" and path.startswith("/slots/"):
            return "work"       # a slot restore computes its cache again
        return "cheap" if name is None or name in cls.CHEAP else "work"

    def log_message(self, fmt, *args):
        if self.app.verbose:
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    # ---- plumbing ----

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, headers too long, unknown
        method) as JSON too."""
        if code == 501:
            code = 405      # a method we do not know
        elif code >= 500:
            code = 400      # 505: an HTTP version we do not speak
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.1"   # a garbled request line: still answer with headers
        self.close_connection = True
        try:
            self.send_json(code, ApiError(code, message or "bad request").body())
        except OSError:
            pass

    def send_json(self, status, obj, extra_headers=()):
        self.send_text(status, json.dumps(obj, ensure_ascii=False),
                       "application/json; charset=utf-8", extra_headers)

    def send_text(self, status, text, content_type, extra_headers=()):
        body = text if isinstance(text, bytes) else text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra_headers:
            self.send_header(k, v)
        self._cors_headers()
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.app.metrics.count_request(status)

    def _origin(self):
        headers = getattr(self, "headers", None)   # none yet on a garbled request line
        return headers.get("Origin") if headers is not None else None

    def _cors_headers(self):
        allowed = cors_allowed_origin(self.app.cors, self._origin())
        if allowed is not None:
            self.send_header("Access-Control-Allow-Origin", allowed)
            self.send_header("Vary", "Origin")

    def send_preflight(self):
        """A CORS preflight: 200 with what llama-server allows, no API key needed."""
        self.send_response(200)
        self._cors_headers()
        if cors_allowed_origin(self.app.cors, self._origin()) is not None:
            self.send_header("Access-Control-Allow-Credentials", "true")
            self.send_header("Access-Control-Allow-Methods", CORS_METHODS)
            self.send_header("Access-Control-Allow-Headers", "*")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def start_events(self):
        self._streaming = True      # errors from here on go out as an event
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self._cors_headers()
        self.end_headers()
        self.close_connection = True    # the stream ends when we close
        self.app.metrics.count_request(200)

    def send_event(self, obj, event=None):
        data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
        head = b"event: " + event.encode("utf-8") + b"\n" if event else b""
        try:
            self.wfile.write(head + b"data: " + data.encode("utf-8") + b"\n\n")
            self.wfile.flush()
        except (OSError, ValueError):
            raise ClientGone() from None

    def client_gone(self):
        """Whether the peer has closed: readable with nothing to read."""
        try:
            poller = select.poll()      # not select.select: descriptors pass 1024 under load
            poller.register(self.connection, select.POLLIN)
            if poller.poll(0):
                return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True
        return False

    def query(self):
        """The query string's fields: {name: last value}."""
        _, _, qs = self.path.partition("?")
        return {k: v[-1] for k, v in urllib.parse.parse_qs(qs, keep_blank_values=True).items()}

    def read_json(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "Content-Length is not a number") from None
        if length < 0:
            self.close_connection = True
            raise ApiError(400, "Content-Length is negative")
        if length > MAX_BODY:
            self.close_connection = True    # we do not read it, so the connection is spent
            raise ApiError(413, f"the request body is {length} bytes; the limit is {MAX_BODY}")
        self._body_read = True
        try:
            data = self.rfile.read(length) if length else b""
        except socket.timeout:
            self.close_connection = True
            raise ApiError(408, "timed out reading the request body") from None
        if len(data) < length:
            self.close_connection = True
            raise ClientGone()
        if not data:
            raise ApiError(400, "the request has no JSON body")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ApiError(400, f"the request body is not UTF-8 (byte {e.start})") from None
        try:
            body = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        if "\\u" in text and _LONE_SURROGATE.search(text) and _has_lone_surrogate(body):
            raise ApiError(400, "the request holds a lone UTF-16 surrogate (\\ud800-\\udfff "
                                "without its pair); send valid Unicode text")
        return body

    def check_key(self):
        keys = self.app.api_keys
        if not keys:
            return
        auth = self.headers.get("Authorization") or ""
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not given:       # Anthropic's clients send the key this way
            given = (self.headers.get("X-Api-Key") or "").strip()
        if not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
            raise ApiError(401, "invalid or missing API key; send 'Authorization: Bearer KEY' "
                                "or 'X-Api-Key: KEY'", code="invalid_api_key")

    # ---- dispatch ----

    ROUTES = {
        ("GET", "/"): "page", ("GET", "/index.html"): "page",
        ("GET", "/health"): "health", ("GET", "/v1/health"): "health",
        ("GET", "/v1/models"): "models", ("GET", "/models"): "models",
        ("GET", "/metrics"): "metrics",
        ("GET", "/slots"): "slots",
        ("GET", "/props"): "props",
        ("POST", "/v1/chat/completions"): "chat", ("POST", "/chat/completions"): "chat",
        ("POST", "/v1/completions"): "openai_completion",
        ("POST", "/completion"): "completion", ("POST", "/completions"): "completion",
        ("POST", "/v1/embeddings"): "embeddings", ("POST", "/embeddings"): "embeddings",
        ("POST", "/embedding"): "embeddings",
        ("POST", "/tokenize"): "tokenize", ("POST", "/detokenize"): "detokenize",
        ("POST", "/v1/messages"): "messages", ("POST", "/v1/messages/count_tokens"): "count_tokens",
        ("POST", "/v1/responses"): "responses", ("POST", "/responses"): "responses",
        ("POST", "/apply-template"): "apply_template",
        ("POST", "/infill"): "infill",
        ("POST", "/chat/completions/input_tokens"): "input_tokens",
        ("POST", "/v1/chat/completions/input_tokens"): "input_tokens",
    }
    OPEN = ("page", "health")      # no API key needed
    CHEAP = ("page", "health", "models", "metrics", "slots", "props")   # their own worker lane
    ENDPOINTS = {"page": lambda app, http: http.send_page(),
                 "health": api.health, "models": api.models, "metrics": api.metrics,
                 "slots": api.slots, "props": api.props, "chat": api.chat,
                 "openai_completion": api.openai_completion, "completion": api.completion,
                 "embeddings": embeddings, "tokenize": api.tokenize,
                 "detokenize": api.detokenize, "apply_template": api.apply_template,
                 "infill": api.infill, "input_tokens": api.input_tokens,
                 "slot_action": api.slot_action,
                 "messages": anthropic.messages, "count_tokens": anthropic.count_tokens,
                 "responses": responses.responses}

    def dispatch(self):
        path = self.path.split("?", 1)[0]
        if len(path) > 1:
            path = path.rstrip("/")
        method = "GET" if self.command == "HEAD" else self.command
        try:
            if method == "OPTIONS":
                self.send_preflight()
                return
            name = self.ROUTES.get((method, path))
            if self.app.draining:
                self.close_connection = True    # this server is going away: no keep-alive
                if name not in self.CHEAP:
                    raise ApiError(503, "the server is shutting down; send the request to "
                                        "another replica", code="unavailable")
            if name is None and method == "POST" and path.startswith("/slots/"):
                name = "slot_action"        # /slots/ID?action=save|restore|erase
            if name is None:
                if any(p == path for _, p in self.ROUTES):
                    raise ApiError(405, f"{self.command} is not allowed on {path}")
                raise ApiError(404, f"no such endpoint: {path}")
            if name not in self.OPEN:
                self.check_key()
            self.ENDPOINTS[name](self.app, self)
        except ApiError as e:
            if e.status == 503 and e.code == "server_busy":
                self.app.metrics.count_rejected_busy()
            self._reply_error(e)
        except ClientGone:
            self.close_connection = True
        except UserError as e:
            self._reply_error(ApiError(400, str(e)))
        except (ConnectionError, socket.timeout):
            self.close_connection = True
        except Exception as e:     # a bug of ours: say so in JSON, keep serving
            if self.app.verbose:
                import traceback
                traceback.print_exc()
            self._reply_error(ApiError(500, f"internal error: {type(e).__name__}: {e}"))

    def _reply_error(self, e):
        if not getattr(self, "_body_read", False) and self.headers.get("Content-Length", "0") != "0":
            self.close_connection = True    # the unread body must not be taken for a request
        if getattr(self, "_streaming", False):
            try:
                self.send_event({"error": e.body()["error"]})
            except ClientGone:
                pass
            return
        try:
            self.send_json(e.status, e.body())
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_HEAD = do_OPTIONS = do_PUT = do_DELETE = do_PATCH = dispatch

    def send_page(self):
        page = pkgutil.get_data("runtime", "web/index.html")
        self.send_text(200, page, "text/html; charset=utf-8")


def read_api_keys(args):
    keys = []
    if args.api_key:
        keys.append(args.api_key)
    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as f:
                keys += [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read --api-key-file {args.api_key_file}: {e}") from None
        if not keys:
            raise UserError(f"--api-key-file {args.api_key_file} holds no key")
    return keys


def serve(args, gguf):
    """Listen, load the model in the background (/health says 503 meanwhile), serve
    until SIGTERM or SIGINT, then drain: /health 503, new requests 503, the requests
    in flight finish (up to --drain-timeout seconds), exit 0. A second SIGINT stops at
    once."""
    app = App(args)
    app.api_keys = read_api_keys(args)
    max_conns = default_max_connections()       # also raises the open-file soft limit
    if args.max_connections != -1:
        max_conns = min(max_conns, args.max_connections)
    workers = args.threads_http if args.threads_http > 0 else args.parallel + args.queue + 4
    server = _ServerState(app)

    def answer(conn, reader, writer):
        return Handler.answer(server, conn, reader, writer)

    try:
        listener = Listener(args.host, args.port, answer, Handler.lane_of, workers, 4,
                            app.timeout, max_conns)
    except OSError as e:
        reason = (e.strerror or str(e)).split(" (while attempting")[0]
        raise UserError(f"cannot listen on {args.host}:{args.port}: {reason}; "
                        "pick another --host or --port") from None
    except OverflowError:
        raise UserError(f"--port {args.port}: pass 0..65535") from None
    app.listener = listener
    urls = []
    for host, port in listener.addresses:
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        urls.append(f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/")
    url = urls[0]
    print(f"llamazip: listening on {', '.join(urls)} (loading the model)", file=sys.stderr,
          flush=True)

    wake = threading.Event()
    interrupts = []

    def on_signal(signum, frame):
        if signum == signal.SIGINT:
            # A native bundle's launcher passes on the terminal's Ctrl-C, which its child
            # also gets itself: copies a moment apart are one press.
            now = time.monotonic()
            if not interrupts or now - interrupts[-1] > 0.5:
                interrupts.append(now)
            if len(interrupts) >= 2:
                os.write(2, b"llamazip: interrupted twice, stopping now\n")
                os._exit(130)
        app.draining = True
        wake.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    listener.start()

    def load():
        try:
            app.load(gguf)
        except UserError as e:
            app.load_error = str(e)
            print(f"error: {e}", file=sys.stderr, flush=True)
            wake.set()
            return
        except Exception as e:
            app.load_error = f"{type(e).__name__}: {e}"
            print(f"error: the model failed to load: {app.load_error}", file=sys.stderr,
                  flush=True)
            wake.set()
            return
        print(f"llamazip: ready, {len(app.engine.slots)} slots, context {app.engine.n_ctx}, "
              f"model {app.model_name}; open {url}", file=sys.stderr, flush=True)
        if not args.nobrowser and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            import webbrowser
            webbrowser.open(url)

    threading.Thread(target=load, name="load", daemon=True).start()
    try:
        while not wake.wait(0.5):
            pass
        if app.draining:
            drain(app, listener, args.drain_timeout)
    finally:
        print("llamazip: shutting down", file=sys.stderr, flush=True)
        if app.engine is not None:
            app.engine.stop()
            deadline = time.monotonic() + 5
            while listener.active and time.monotonic() < deadline:
                time.sleep(0.05)
        listener.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    return 2 if app.load_error else 0


def drain(app, listener, seconds):
    """Let the requests in flight finish, up to `seconds`; new ones get 503 meanwhile
    (and are not waited for: a busy balancer's stream of them must not hold us up)."""
    began = time.monotonic()
    print(f"llamazip: draining: {listener.active_since(began)} requests in flight, waiting "
          f"up to {seconds:g} s", file=sys.stderr, flush=True)
    while listener.active_since(began) and time.monotonic() < began + seconds:
        time.sleep(0.05)
    if listener.active_since(began):
        print(f"llamazip: drain timeout: stopping {listener.active_since(began)} requests",
              file=sys.stderr, flush=True)


class _ServerState:
    """What a Handler reaches as `self.server`: the App."""

    def __init__(self, app):
        self.app = app
