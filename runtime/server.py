"""`--server`: an HTTP server with OpenAI's API, llama.cpp's endpoints and a chat page.

Everything is the standard library: ThreadingHTTPServer gives each connection a
thread, and each request holds one of N slots (a Session with its own KV cache over
the shared weights) while it generates. Requests beyond the slots wait in a bounded
queue; past it they get 503.

Parallel slots progress together through the Batcher: a slot's single-token decode
step is handed to one engine thread that runs the steps of all generating slots as
one batched forward pass (Model.forward_batch), so N streams cost little more than
one on memory-bound matmuls. Prompt prefill runs directly under the same compute lock,
so a long prompt only pauses the others between its chunks.

Errors come back in OpenAI's JSON shape with the right status, never as a traceback.
"""

import array
import base64
import hmac
import json
import math
import os
import select
import signal
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from runtime.errors import UserError

MAX_BODY = 8 << 20          # bytes of request body we read; larger is 413
GATHER_MAX_SECONDS = 0.05   # longest a decode step waits for the other slots to join it
STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
                408: "timeout_error", 411: "invalid_request_error", 413: "invalid_request_error",
                500: "server_error", 503: "unavailable_error"}


class ApiError(Exception):
    """A request we answer with an error: the status and OpenAI's error object."""

    def __init__(self, status, message, param=None, code=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self):
        return {"error": {"message": self.message, "type": STATUS_TYPES.get(self.status, "error"),
                          "param": self.param, "code": self.code}}


class WithoutTokens:
    """A logits row with some tokens masked to -inf, without copying the vocabulary:
    top(k) asks the row for a few more candidates and drops the masked ones."""

    def __init__(self, logits, banned):
        self.logits = logits
        self.banned = banned

    def __len__(self):
        return len(self.logits)

    def __getitem__(self, i):
        return float("-inf") if i in self.banned else self.logits[i]

    def __iter__(self):
        return (self[i] for i in range(len(self.logits)))

    def top(self, k):
        from runtime.sampling import as_logits
        best = as_logits(self.logits).top(k + len(self.banned))
        return [(v, t) for v, t in best if t not in self.banned][:k]


class IgnoreEos:
    """llama.cpp's `ignore_eos`: generate past end-of-generation tokens (benchmarks)."""

    def __init__(self, eog_ids):
        self.eog = eog_ids

    def sample(self, sampler, logits, history):
        return sampler.sample(WithoutTokens(logits, self.eog), history)

    def advance(self, token):
        return False


class ClientGone(Exception):
    """The client closed its connection."""


# ---------------------------------------------------------------- slots and batching

class Slot:
    def __init__(self, slot_id, session):
        self.id = slot_id
        self.session = session
        self.busy = False
        self.state = "idle"         # idle | prompt | generating
        self.decoding = False       # has handed decode steps to the batcher this request
        self.n_prompt = 0
        self.started = 0.0

    def describe(self):
        s = self.session
        return {"id": self.id, "n_ctx": s.n_ctx, "is_processing": self.busy, "state": self.state,
                "n_prompt_tokens": self.n_prompt, "n_decoded": len(getattr(s, "generated", [])
                                                                   if self.busy else []),
                "n_cached": len(s.tokens)}


class Batcher:
    """Runs the decode steps of all generating slots as one batched forward pass."""

    def __init__(self, model, slots):
        self.model = model
        self.slots = slots
        self.compute = threading.Lock()     # one forward pass at a time, batched or not
        self.batched = hasattr(model.backend, "attention_rows")
        self.cond = threading.Condition()
        self.pending = []
        self.stopping = False
        self.last_step = 0.0
        self.steps = 0
        self.rows = 0
        if self.batched:
            threading.Thread(target=self._loop, name="batcher", daemon=True).start()

    def step(self, slot, twin, token, pos):
        """Logits (one row) of `token` at `pos` in `twin`'s cache, computed with the others'."""
        if not self.batched:
            with self.compute:
                return twin.forward([token], pos)
        job = {"twin": twin, "token": token, "pos": pos, "done": False}
        with self.cond:
            slot.decoding = True
            self.pending.append(job)
            self.cond.notify_all()
            while not job["done"]:
                self.cond.wait()
        if "error" in job:
            raise job["error"]
        return job["logits"]

    def slot_left(self):
        with self.cond:
            self.cond.notify_all()

    def stop(self):
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def _loop(self):
        b = self.model.backend
        while True:
            with self.cond:
                while not self.pending and not self.stopping:
                    self.cond.wait()
                if self.stopping and not self.pending:
                    return
                # Give the other generating slots a moment to join this step: they are
                # sampling their previous token. Bounded, so a stalled slot delays no one long.
                deadline = time.monotonic() + min(GATHER_MAX_SECONDS, max(0.002, self.last_step / 2))
                while len(self.pending) < sum(s.busy and s.decoding for s in self.slots):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.cond.wait(left)
                jobs, self.pending = self.pending, []
            t0 = time.perf_counter()
            with self.compute:
                try:
                    logits = self.model.forward_batch([j["token"] for j in jobs],
                                                      [j["pos"] for j in jobs],
                                                      [j["twin"].cache for j in jobs])
                    for r, j in enumerate(jobs):
                        j["logits"] = b.take_rows(logits, r, r + 1)
                except Exception as e:      # handed to each waiting request, which reports it
                    for j in jobs:
                        j["error"] = e
            self.last_step = time.perf_counter() - t0
            self.steps += 1
            self.rows += len(jobs)
            with self.cond:
                for j in jobs:
                    j["done"] = True
                self.cond.notify_all()


class SlotModel:
    """What a slot's Session sees as its model: the slot's twin (own KV cache), whose
    single-token decode steps go through the batcher."""

    def __init__(self, twin, batcher, slot=None):
        self.twin = twin
        self.batcher = batcher
        self.slot = slot

    @property
    def n_ctx(self):
        return self.twin.n_ctx

    @property
    def backend(self):
        return self.twin.backend

    @property
    def config(self):
        return self.twin.config

    def forward(self, tokens, pos0, last_only=True, hidden=False):
        if len(tokens) == 1 and last_only and not hidden:
            return self.batcher.step(self.slot, self.twin, tokens[0], pos0)
        with self.batcher.compute:
            return self.twin.forward(tokens, pos0, last_only, hidden)


class Engine:
    """The model, its slots, and the queue of requests waiting for one."""

    def __init__(self, model, tokenizer, n_slots, queue_size, batch_size=512):
        from runtime.session import Session
        self.model = model
        self.tokenizer = tokenizer
        self.slots = []
        self.batcher = Batcher(model, self.slots)
        for i in range(n_slots):
            slot_model = SlotModel(model.with_own_cache(), self.batcher)
            slot = Slot(i, Session(slot_model, tokenizer, batch_size=batch_size))
            slot_model.slot = slot
            self.slots.append(slot)
        self.queue_size = queue_size
        self.waiting = 0
        self.cond = threading.Condition()
        self.stopping = False

    @property
    def n_ctx(self):
        return self.model.n_ctx

    def acquire(self, prompt_tokens, client_gone):
        """A free slot (the one whose cache shares most with the prompt), waiting in
        the queue if need be; 503 when the queue is full."""
        with self.cond:
            if not self._free() and self.waiting >= self.queue_size:
                raise ApiError(503, f"the server is busy: all {len(self.slots)} slots are in use "
                                    f"and {self.waiting} requests are waiting; retry later",
                               code="server_busy")
            self.waiting += 1
            try:
                while not self._free():
                    if self.stopping:
                        raise ApiError(503, "the server is shutting down")
                    self.cond.wait(0.25)
                    if client_gone():
                        raise ClientGone()
            finally:
                self.waiting -= 1
            slot = max(self._free(), key=lambda s: _common_prefix(s.session.tokens, prompt_tokens))
            slot.busy = True
            slot.state = "prompt"
            slot.decoding = False
            slot.n_prompt = len(prompt_tokens)
            slot.started = time.time()
            slot.session.generated = []
            return slot

    def release(self, slot):
        with self.cond:
            slot.busy = False
            slot.decoding = False
            slot.state = "idle"
            self.cond.notify_all()
        self.batcher.slot_left()

    def _free(self):
        return [s for s in self.slots if not s.busy]

    def stop(self):
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.batcher.stop()


def _common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Metrics:
    """Counters for /metrics (Prometheus text format)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = {}          # status -> count
        self.prompt_tokens = 0
        self.prompt_seconds = 0.0
        self.predicted_tokens = 0
        self.predicted_seconds = 0.0
        self.completions = 0
        self.disconnects = 0
        self.rejected_busy = 0

    def count_request(self, status):
        with self.lock:
            self.requests[status] = self.requests.get(status, 0) + 1

    def add_generation(self, timings, n_generated):
        with self.lock:
            self.completions += 1
            self.prompt_tokens += timings.prompt_tokens
            self.prompt_seconds += timings.prompt_seconds
            self.predicted_tokens += n_generated
            self.predicted_seconds += timings.generate_seconds

    def render(self, engine):
        busy = sum(s.busy for s in engine.slots) if engine else 0
        waiting = engine.waiting if engine else 0
        n_slots = len(engine.slots) if engine else 0
        with self.lock:
            lines = []

            def metric(name, kind, help_text, value, labels=""):
                lines.append(f"# HELP llamazip:{name} {help_text}")
                lines.append(f"# TYPE llamazip:{name} {kind}")
                lines.append(f"llamazip:{name}{labels} {value}")

            metric("prompt_tokens_total", "counter", "Prompt tokens computed.", self.prompt_tokens)
            metric("prompt_seconds_total", "counter", "Seconds spent on prompts.",
                   f"{self.prompt_seconds:.6f}")
            metric("tokens_predicted_total", "counter", "Tokens generated.", self.predicted_tokens)
            metric("tokens_predicted_seconds_total", "counter", "Seconds spent generating.",
                   f"{self.predicted_seconds:.6f}")
            pps = self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0
            gps = self.predicted_tokens / self.predicted_seconds if self.predicted_seconds else 0.0
            metric("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s.",
                   f"{pps:.3f}")
            metric("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s "
                   "(per stream).", f"{gps:.3f}")
            metric("completions_total", "counter", "Generations finished.", self.completions)
            metric("client_disconnects_total", "counter",
                   "Generations stopped because the client went away.", self.disconnects)
            metric("requests_rejected_busy_total", "counter",
                   "Requests refused with 503 because the queue was full.", self.rejected_busy)
            metric("requests_processing", "gauge", "Requests holding a slot.", busy)
            metric("requests_deferred", "gauge", "Requests waiting for a slot.", waiting)
            metric("slots_total", "gauge", "Parallel slots.", n_slots)
            lines.append("# HELP llamazip:http_requests_total HTTP requests answered, by status.")
            lines.append("# TYPE llamazip:http_requests_total counter")
            for status in sorted(self.requests):
                lines.append(f'llamazip:http_requests_total{{status="{status}"}} '
                             f"{self.requests[status]}")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- request fields

def _field(body, name, kind, default=None, lo=None, hi=None):
    """body[name] checked against `kind` (int, float, bool, str, list, dict) and range."""
    value = body.get(name, default)
    if value is None:
        return default
    ok = {
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
        and math.isfinite(v),
        bool: lambda v: isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        list: lambda v: isinstance(v, list),
        dict: lambda v: isinstance(v, dict),
    }[kind](value)
    if not ok:
        names = {int: "an integer", float: "a number", bool: "a boolean", str: "a string",
                 list: "an array", dict: "an object"}
        raise ApiError(400, f"'{name}' must be {names[kind]}", param=name)
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ApiError(400, f"'{name}' must be between {lo} and {hi}, got {value}", param=name)
    return value


def _stops(body, name="stop"):
    stop = body.get(name)
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 16:
        return [s for s in stop if s]
    raise ApiError(400, f"'{name}' must be a string or an array of at most 16 strings", param=name)


# ---------------------------------------------------------------- the application

class App:
    """State shared by all request threads."""

    def __init__(self, args):
        self.args = args
        self.api_keys = []
        self.cors = args.cors
        self.timeout = args.timeout
        self.engine = None          # set once the model is loaded
        self.chat_format = None
        self.model_name = "model"
        self.metrics = Metrics()
        self.load_error = None
        self.chat_error = None
        self.created = int(time.time())
        self.verbose = args.verbose

    def load(self, gguf):
        """Build tokenizer, model, slots; warm the weights so the first request is quick."""
        from runtime.cli import load_backend, sampling_params
        from runtime.chat import load_chat_format
        from runtime.model import Config, Model
        from runtime.tokenizer import Tokenizer
        args = self.args
        Config(gguf)
        tokenizer = Tokenizer.from_gguf(gguf)
        threads = args.threads if args.threads > 0 else (os.cpu_count() or 1)
        backend = load_backend(args.backend, threads)
        model = Model(gguf, backend, n_ctx=args.ctx_size)
        try:
            self.chat_format = load_chat_format(gguf, getattr(args, "chat_template", None))
        except UserError as e:
            # Completions still work; chat requests say why they cannot.
            self.chat_error = str(e)
            print(f"warning: {e}", file=sys.stderr, flush=True)
        self.defaults = sampling_params(args)
        engine = Engine(model, tokenizer, max(1, args.parallel), max(0, args.queue),
                        batch_size=args.batch_size)
        warm = engine.slots[0].session
        warm.eval([tokenizer.bos_id if tokenizer.bos_id is not None else 0])
        warm.reset()
        name = gguf.get("general.name") or os.path.basename(str(gguf.source))
        self.model_name = str(name)
        self.engine = engine

    def ready(self):
        if self.load_error is not None:
            raise ApiError(503, f"the model failed to load: {self.load_error}")
        if self.engine is None:
            raise ApiError(503, "Loading model", code="loading")
        return self.engine


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llamazip"
    sys_version = ""

    @property
    def app(self):
        return self.server.app

    def setup(self):
        super().setup()
        # Slow or silent clients give up their thread after this long.
        self.connection.settimeout(self.server.app.timeout)

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
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
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

    def send_text(self, status, text, content_type):
        body = text if isinstance(text, bytes) else text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._cors_headers()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.app.metrics.count_request(status)

    def _cors_headers(self):
        if self.app.cors:
            self.send_header("Access-Control-Allow-Origin", self.app.cors)
            self.send_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
            self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")

    def start_events(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self._cors_headers()
        self.end_headers()
        self.close_connection = True    # the stream ends when we close
        self.app.metrics.count_request(200)

    def send_event(self, obj):
        data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
        try:
            self.wfile.write(b"data: " + data.encode("utf-8") + b"\n\n")
            self.wfile.flush()
        except (OSError, ValueError):
            raise ClientGone() from None

    def client_gone(self):
        """Whether the peer has closed: readable with nothing to read."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if readable:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True
        return False

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
        return body

    def check_key(self):
        keys = self.app.api_keys
        if not keys:
            return
        auth = self.headers.get("Authorization") or ""
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
            raise ApiError(401, "invalid or missing API key; send 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

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
    }
    OPEN = ("page", "health")      # no API key needed

    def dispatch(self):
        path = self.path.split("?", 1)[0]
        if len(path) > 1:
            path = path.rstrip("/")
        method = "GET" if self.command == "HEAD" else self.command
        try:
            if method == "OPTIONS":
                self.send_response(204)
                self._cors_headers()
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            name = self.ROUTES.get((method, path))
            if name is None:
                if any(p == path for _, p in self.ROUTES):
                    raise ApiError(405, f"{self.command} is not allowed on {path}")
                raise ApiError(404, f"no such endpoint: {path}")
            if name not in self.OPEN:
                self.check_key()
            getattr(self, "do_" + name)()
        except ApiError as e:
            if e.status == 503 and e.code == "server_busy":
                self.app.metrics.rejected_busy += 1
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

    # ---- simple endpoints ----

    def do_page(self):
        import pkgutil
        page = pkgutil.get_data("runtime", "web/index.html")
        self.send_text(200, page, "text/html; charset=utf-8")

    def do_health(self):
        self.app.ready()
        self.send_json(200, {"status": "ok"})

    def do_models(self):
        self.app.ready()
        self.send_json(200, {"object": "list", "data": [
            {"id": self.app.model_name, "object": "model", "created": self.app.created,
             "owned_by": "llamazip", "meta": {"n_ctx": self.app.engine.n_ctx,
                                              "n_vocab": self.app.engine.tokenizer.n_vocab}}]})

    def do_metrics(self):
        self.send_text(200, self.app.metrics.render(self.app.engine),
                       "text/plain; version=0.0.4; charset=utf-8")

    def do_slots(self):
        engine = self.app.ready()
        self.send_json(200, [s.describe() for s in engine.slots])

    def do_props(self):
        engine = self.app.ready()
        self.send_json(200, {"model": self.app.model_name, "n_ctx": engine.n_ctx,
                             "total_slots": len(engine.slots),
                             "chat_template": getattr(self.app.chat_format, "source", "")})

    def do_tokenize(self):
        engine = self.app.ready()
        body = self.read_json()
        content = _field(body, "content", str)
        if content is None:
            raise ApiError(400, "'content' (a string) is required", param="content")
        add_special = _field(body, "add_special", bool, False)
        with_pieces = _field(body, "with_pieces", bool, False)
        tok = engine.tokenizer
        ids = tok.encode(content, add_special=add_special, parse_special=True)
        if with_pieces:
            out = []
            for i in ids:
                piece = tok.token_to_piece(i)
                try:
                    out.append({"id": i, "piece": piece.decode("utf-8")})
                except UnicodeDecodeError:
                    out.append({"id": i, "piece": list(piece)})
            self.send_json(200, {"tokens": out})
        else:
            self.send_json(200, {"tokens": ids})

    def do_detokenize(self):
        engine = self.app.ready()
        body = self.read_json()
        ids = self._token_ids(body.get("tokens"), "tokens", allow_empty=True)
        self.send_json(200, {"content": engine.tokenizer.decode(ids)})

    def _token_ids(self, value, param, allow_empty=False):
        n_vocab = self.app.engine.tokenizer.n_vocab
        if not isinstance(value, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in value):
            raise ApiError(400, f"'{param}' must be an array of token ids", param=param)
        bad = [t for t in value if not 0 <= t < n_vocab]
        if bad:
            raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{n_vocab - 1})",
                           param=param)
        if not value and not allow_empty:
            raise ApiError(400, f"'{param}' is empty", param=param)
        return value

    # ---- prompts ----

    def _prompt_tokens(self, prompt, param="prompt"):
        """Token ids of a completion prompt: text, [text], or token ids."""
        tok = self.app.engine.tokenizer
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            if not prompt:
                raise ApiError(400, f"'{param}' is empty", param=param)
            return tok.encode(prompt, add_special=True, parse_special=True)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return self._token_ids(prompt, param)
        if isinstance(prompt, list) and len(prompt) > 1:
            raise ApiError(400, "only one prompt per request is supported (n=1)", param=param)
        raise ApiError(400, f"'{param}' must be a string or an array of token ids", param=param)

    def _chat_tokens(self, messages):
        from runtime.chat import Conversation
        if self.app.chat_format is None:
            raise ApiError(500, f"chat is unavailable: {self.app.chat_error}")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty array", param="messages")
        clean = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise ApiError(400, f"messages[{i}] must be an object", param="messages")
            role = m.get("role")
            if role == "developer":
                role = "system"
            if role not in ("system", "user", "assistant"):
                raise ApiError(400, f"messages[{i}].role must be system, user or assistant",
                               param="messages")
            content = m.get("content")
            if content is None and role == "assistant":
                content = ""
            if isinstance(content, list):
                parts = []
                for part in content:
                    if not (isinstance(part, dict) and part.get("type") == "text"
                            and isinstance(part.get("text"), str)):
                        raise ApiError(400, f"messages[{i}].content: only text parts are "
                                            "supported", param="messages")
                    parts.append(part["text"])
                content = "".join(parts)
            if not isinstance(content, str):
                raise ApiError(400, f"messages[{i}].content must be a string", param="messages")
            clean.append({"role": role, "content": content})
        conversation = Conversation(self.app.chat_format, self.app.engine.tokenizer)
        conversation.messages = clean
        return conversation.tokens(add_generation_prompt=True)

    def _sampling(self, body, openai):
        from runtime.sampling import SamplingParams
        d = self.app.defaults
        return SamplingParams(
            temperature=_field(body, "temperature", float, d.temperature, 0.0, 2.0 if openai else 100.0),
            top_k=_field(body, "top_k", int, d.top_k, 0, 1 << 30),
            top_p=_field(body, "top_p", float, d.top_p, 0.0, 1.0),
            min_p=_field(body, "min_p", float, d.min_p, 0.0, 1.0),
            repeat_penalty=_field(body, "repeat_penalty", float, d.repeat_penalty, 0.0, 10.0),
            repeat_last_n=_field(body, "repeat_last_n", int, d.repeat_last_n, -1, 1 << 20),
            presence_penalty=_field(body, "presence_penalty", float, d.presence_penalty, -2.0, 2.0),
            frequency_penalty=_field(body, "frequency_penalty", float, d.frequency_penalty,
                                     -2.0, 2.0),
            seed=_field(body, "seed", int, d.seed, -(1 << 63), (1 << 64) - 1))

    def _constraint(self, body):
        fmt = body.get("response_format")
        if fmt is None:
            return None
        if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
            raise ApiError(400, "'response_format' must be an object with a 'type'",
                           param="response_format")
        from runtime.json_constraint import JsonConstraint, SchemaError
        kind = fmt["type"]
        if kind == "text":
            return None
        if kind == "json_object":
            schema = fmt.get("schema")       # llama.cpp accepts a schema here too
        elif kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise ApiError(400, "'response_format.json_schema' must be an object with a "
                                    "'schema' object", param="response_format")
            schema = spec.get("schema", {})
        else:
            raise ApiError(400, f"response_format type {kind!r} is not supported "
                                "(text, json_object, json_schema)", param="response_format")
        try:
            return JsonConstraint(self.app.engine.tokenizer, schema)
        except (SchemaError, TypeError, ValueError) as e:
            raise ApiError(400, f"unsupported JSON schema: {e}", param="response_format") from None

    def _check_openai(self, body):
        n = _field(body, "n", int, 1)
        if n != 1:
            raise ApiError(400, "only n=1 is supported", param="n")
        if body.get("logprobs") not in (None, False) or body.get("top_logprobs") is not None:
            raise ApiError(400, "logprobs are not supported", param="logprobs")
        if body.get("tools") or body.get("functions"):
            raise ApiError(400, "tools and function calling are not supported", param="tools")
        if _field(body, "best_of", int, 1) != 1:
            raise ApiError(400, "only best_of=1 is supported", param="best_of")
        if _field(body, "echo", bool, False):
            raise ApiError(400, "echo is not supported", param="echo")
        _field(body, "model", str)
        _field(body, "user", str)

    def _budget(self, body, prompt_tokens, names, openai):
        """Tokens to generate: the request's limit, checked against the context."""
        n_ctx = self.app.engine.n_ctx
        limit = None
        for name in names:
            if body.get(name) is not None:
                limit = _field(body, name, int, None, -1 if not openai else 1, 1 << 31)
                param = name
                break
        if len(prompt_tokens) >= n_ctx:
            raise ApiError(400, f"the prompt is {len(prompt_tokens)} tokens but the context is "
                                f"{n_ctx}; shorten it", param="messages" if "messages" in body
                           else "prompt", code="context_length_exceeded")
        room = n_ctx - len(prompt_tokens)
        if limit is None or limit < 0:
            return room
        if limit > room:
            if openai:
                raise ApiError(400, f"{param}={limit} does not fit: the context is {n_ctx} tokens "
                                    f"and the prompt takes {len(prompt_tokens)}; at most {room} "
                                    "tokens can be generated", param=param,
                               code="context_length_exceeded")
            return room
        return limit

    # ---- generation ----

    def _generate(self, prompt_tokens, params, n_predict, stops, constraint, on_piece):
        """Run one generation on a slot; `on_piece(text, new_token_ids)` gets the pieces.
        Returns (slot session, text)."""
        engine = self.app.engine
        slot = engine.acquire(prompt_tokens, self.client_gone)
        session = slot.session
        gone = []

        def should_stop():
            if engine.stopping:
                return True
            if self.client_gone():
                gone.append(True)
                return True
            return False

        pieces = []
        sent = 0
        try:
            for piece in session.generate(prompt_tokens, params, n_predict, stops, should_stop,
                                          constraint):
                slot.state = "generating"
                pieces.append(piece)
                ids = session.generated[sent:]
                sent = len(session.generated)
                on_piece(piece, ids)
        except ClientGone:
            gone.append(True)
        finally:
            self.app.metrics.add_generation(session.timings, len(session.generated))
            if gone:
                self.app.metrics.disconnects += 1
            engine.release(slot)
        if gone:
            raise ClientGone()
        return session, "".join(pieces), slot

    def _timings(self, session):
        t = session.timings
        n_gen = len(session.generated)
        pms = t.prompt_seconds * 1000
        gms = t.generate_seconds * 1000
        return {"prompt_n": t.prompt_tokens, "prompt_ms": round(pms, 3),
                "prompt_per_token_ms": round(pms / t.prompt_tokens, 3) if t.prompt_tokens else 0,
                "prompt_per_second": round(t.prompt_per_second, 3),
                "predicted_n": n_gen, "predicted_ms": round(gms, 3),
                "predicted_per_token_ms": round(gms / n_gen, 3) if n_gen else 0,
                "predicted_per_second": round(n_gen / t.generate_seconds, 3)
                if t.generate_seconds and n_gen else 0.0,
                "cache_n": t.reused_tokens}

    def _usage(self, prompt_tokens, session):
        n = len(session.generated)
        return {"prompt_tokens": len(prompt_tokens), "completion_tokens": n,
                "total_tokens": len(prompt_tokens) + n}

    def do_chat(self):
        self._openai_generate(chat=True)

    def do_openai_completion(self):
        self._openai_generate(chat=False)

    def _openai_generate(self, chat):
        self.app.ready()
        body = self.read_json()
        self._check_openai(body)
        stream = _field(body, "stream", bool, False)
        options = _field(body, "stream_options", dict, {})
        include_usage = _field(options, "include_usage", bool, False)
        if chat:
            prompt_tokens = self._chat_tokens(body.get("messages"))
        else:
            if "prompt" not in body:
                raise ApiError(400, "'prompt' is required", param="prompt")
            prompt_tokens = self._prompt_tokens(body["prompt"])
        n_predict = self._budget(body, prompt_tokens, ("max_completion_tokens", "max_tokens"),
                                 openai=True)
        params = self._sampling(body, openai=True)
        stops = _stops(body)
        constraint = self._constraint(body)
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        model = self.app.model_name
        kind = "chat.completion" if chat else "text_completion"

        def choice(text, finish, delta=None):
            if chat:
                c = {"index": 0, "logprobs": None, "finish_reason": finish}
                if delta is not None:
                    c["delta"] = delta
                else:
                    c["message"] = {"role": "assistant", "content": text}
                return c
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

        def envelope(choices, **extra):
            obj = {"id": ident, "object": kind + (".chunk" if stream and chat else ""),
                   "created": created, "model": model, "system_fingerprint": "llamazip",
                   "choices": choices}
            obj.update(extra)
            return obj

        if not stream:
            session, text, _ = self._generate(prompt_tokens, params, n_predict, stops,
                                              constraint, lambda piece, ids: None)
            self.send_json(200, envelope([choice(text, session.finish_reason)],
                                         usage=self._usage(prompt_tokens, session),
                                         timings=self._timings(session)))
            return

        self.start_events()
        self._streaming = True
        if chat:
            self.send_event(envelope([choice("", None, {"role": "assistant", "content": ""})]))

        def on_piece(piece, ids):
            delta = {"content": piece} if chat else None
            self.send_event(envelope([choice(piece, None, delta)]))

        session, _, _ = self._generate(prompt_tokens, params, n_predict, stops, constraint,
                                       on_piece)
        final = envelope([choice("", session.finish_reason, {} if chat else None)],
                         timings=self._timings(session))
        self.send_event(final)
        if include_usage:
            self.send_event(envelope([], usage=self._usage(prompt_tokens, session)))
        self.send_event("[DONE]")

    def do_completion(self):
        """llama.cpp's /completion: prompt text or ids, n_predict, its sampling fields."""
        engine = self.app.ready()
        body = self.read_json()
        if "prompt" not in body:
            raise ApiError(400, "'prompt' is required", param="prompt")
        prompt_tokens = self._prompt_tokens(body["prompt"])
        n_predict = self._budget(body, prompt_tokens, ("n_predict", "max_tokens"), openai=False)
        params = self._sampling(body, openai=False)
        stops = _stops(body)
        stream = _field(body, "stream", bool, False)
        return_tokens = _field(body, "return_tokens", bool, False)
        constraint = self._constraint(body)
        if body.get("json_schema") is not None:
            constraint = self._constraint({"response_format": {
                "type": "json_schema", "json_schema": {"schema": body["json_schema"]}}})
        if _field(body, "ignore_eos", bool, False) and constraint is None:
            constraint = IgnoreEos(engine.tokenizer.eog_ids)

        def final(session, text, slot):
            stop_type = "limit"
            if session.finish_reason == "stop":
                last = session.generated[-1:] if session.generated else []
                stop_type = "word" if stops and len(session.generated) < n_predict else "eos"
                if last and last[0] in engine.tokenizer.eog_ids:
                    stop_type = "eos"
            out = {"content": text, "id_slot": slot.id, "stop": True, "model": self.app.model_name,
                   "tokens_predicted": len(session.generated),
                   "tokens_evaluated": len(prompt_tokens), "stop_type": stop_type,
                   "tokens_cached": len(session.tokens), "truncated": False,
                   "timings": self._timings(session)}
            if return_tokens:
                out["tokens"] = list(session.generated)
            return out

        if not stream:
            session, text, slot = self._generate(prompt_tokens, params, n_predict, stops,
                                                 constraint, lambda piece, ids: None)
            self.send_json(200, final(session, text, slot))
            return

        self.start_events()
        self._streaming = True

        def on_piece(piece, ids):
            chunk = {"content": piece, "stop": False}
            if return_tokens:
                chunk["tokens"] = list(ids)
            self.send_event(chunk)

        session, text, slot = self._generate(prompt_tokens, params, n_predict, stops, constraint,
                                             on_piece)
        last = final(session, "", slot)
        self.send_event(last)

    # ---- embeddings ----

    def do_embeddings(self):
        engine = self.app.ready()
        body = self.read_json()
        raw = body.get("input", body.get("content"))
        if isinstance(raw, str) or (isinstance(raw, list) and raw and
                                    all(isinstance(t, int) for t in raw)):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, (str, list)) for x in raw):
            inputs = raw
        else:
            raise ApiError(400, "'input' must be a string, an array of strings, or token ids",
                           param="input")
        if len(inputs) > 64:
            raise ApiError(400, "at most 64 inputs per request", param="input")
        fmt = _field(body, "encoding_format", str, "float")
        if fmt not in ("float", "base64"):
            raise ApiError(400, "'encoding_format' must be float or base64",
                           param="encoding_format")
        tok = engine.tokenizer
        batches = []
        for x in inputs:
            ids = tok.encode(x, add_special=True, parse_special=True) if isinstance(x, str) \
                else self._token_ids(x, "input")
            if not ids:
                raise ApiError(400, "an input is empty", param="input")
            if len(ids) > engine.n_ctx:
                raise ApiError(400, f"an input is {len(ids)} tokens; the context is "
                                    f"{engine.n_ctx}", param="input",
                               code="context_length_exceeded")
            batches.append(ids)
        slot = engine.acquire(batches[0], self.client_gone)
        data = []
        try:
            for i, ids in enumerate(batches):
                vector = self._embed(slot, ids)
                if fmt == "base64":
                    packed = array.array("f", vector)
                    if sys.byteorder != "little":
                        packed.byteswap()
                    vector = base64.b64encode(packed.tobytes()).decode("ascii")
                data.append({"object": "embedding", "index": i, "embedding": vector})
        finally:
            engine.release(slot)
        n = sum(len(ids) for ids in batches)
        self.send_json(200, {"object": "list", "data": data, "model": self.app.model_name,
                             "usage": {"prompt_tokens": n, "total_tokens": n}})

    def _embed(self, slot, ids):
        """Mean of the final (normalised) hidden states, scaled to unit length."""
        session = slot.session
        session.reset()     # the pass below overwrites the cache from position 0
        try:
            hidden = session.model.forward(ids, 0, last_only=False, hidden=True)
            rows = session.model.backend.to_floats(hidden)
        finally:
            session.reset()
        dim = len(rows[0])
        mean = [sum(row[j] for row in rows) / len(rows) for j in range(dim)]
        norm = math.sqrt(sum(v * v for v in mean)) or 1.0
        return [v / norm for v in mean]


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def handle_error(self, request, client_address):
        # A connection that broke mid-request: nothing to tell anyone.
        if self.app.verbose:
            super().handle_error(request, client_address)


# ---------------------------------------------------------------- entry point

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
    until SIGINT or SIGTERM."""
    app = App(args)
    app.api_keys = read_api_keys(args)
    try:
        httpd = Server((args.host, args.port), Handler)
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    httpd.app = app
    host, port = httpd.server_address[:2]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{shown}:{port}/"
    print(f"llamazip: listening on {url} (loading the model)", file=sys.stderr, flush=True)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                     name="http", daemon=True).start()

    def load():
        try:
            app.load(gguf)
        except UserError as e:
            app.load_error = str(e)
            print(f"error: {e}", file=sys.stderr, flush=True)
            stop.set()
            return
        except Exception as e:
            app.load_error = f"{type(e).__name__}: {e}"
            print(f"error: the model failed to load: {app.load_error}", file=sys.stderr,
                  flush=True)
            stop.set()
            return
        print(f"llamazip: ready, {len(app.engine.slots)} slots, context {app.engine.n_ctx}, "
              f"model {app.model_name}; open {url}", file=sys.stderr, flush=True)
        if not args.nobrowser and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            import webbrowser
            webbrowser.open(url)

    threading.Thread(target=load, name="load", daemon=True).start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        print("llamazip: shutting down", file=sys.stderr, flush=True)
        if app.engine is not None:
            app.engine.stop()
            deadline = time.monotonic() + 5
            while any(s.busy for s in app.engine.slots) and time.monotonic() < deadline:
                time.sleep(0.05)
        httpd.shutdown()
        httpd.server_close()
        for s, handler in old.items():
            signal.signal(s, handler)
    return 2 if app.load_error else 0
