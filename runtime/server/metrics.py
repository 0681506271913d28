"""/metrics in Prometheus's text format, under llama-server's names (llamacpp:...), so
dashboards and alerts written for llama-server read ours unchanged. A few figures
llama-server has no name for (idle slots, refusals, open connections, draining)
follow under llamazip:.

As in llama-server, the two throughput gauges are averaged over the window between
two scrapes: each scrape reads them and starts a new window.
"""

import threading

# (name, help) in llama-server's order (tools/server/server-task.cpp, to_metrics).
COUNTERS = (
    ("prompt_tokens_total", "Number of prompt tokens processed, excluding cached tokens"),
    ("prompt_tokens_cached_total", "Number of prompt tokens reused from the cache"),
    ("prompt_seconds_total", "Total time spent processing prompts"),
    ("tokens_predicted_total", "Number of generation tokens processed"),
    ("tokens_predicted_seconds_total", "Total time spent generating tokens"),
    ("n_decode_total", "Total number of llama_decode() calls, excluding speculative decoding "
                       "and multimodal decoding"),
    ("n_tokens_max", "Largest observed sequence length (prompt + generation)"),
    ("spec_decode_num_draft_tokens_total", "Speculative: Total draft tokens generated"),
    ("spec_decode_num_accepted_tokens_total",
     "Speculative: Total draft tokens accepted by the target model"),
    ("spec_decode_num_drafts_total", "Speculative: Total speculative decoding verification steps"),
)
GAUGES = (
    ("prompt_tokens_seconds", "Average prompt throughput in tokens/s"),
    ("predicted_tokens_seconds", "Average generation throughput in tokens/s"),
    ("requests_processing", "Number of requests processing"),
    ("requests_deferred", "Number of requests deferred"),
    ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call"),
)


class Metrics:
    """What /metrics reports; request threads add to it under one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = {}          # HTTP status -> count
        self.prompt_tokens = 0
        self.prompt_cached = 0
        self.prompt_seconds = 0.0
        self.predicted_tokens = 0
        self.predicted_seconds = 0.0
        self.n_tokens_max = 0
        self.completions = 0
        self.disconnects = 0
        self.rejected_busy = 0
        self.window = [0, 0.0, 0, 0.0]  # prompt tokens, seconds, predicted tokens, seconds

    def count_request(self, status):
        with self.lock:
            self.requests[status] = self.requests.get(status, 0) + 1

    def count_disconnect(self):
        with self.lock:
            self.disconnects += 1

    def count_rejected_busy(self):
        with self.lock:
            self.rejected_busy += 1

    def add_generation(self, timings, n_generated, n_tokens):
        """One finished generation: its Session timings, tokens generated, and the
        sequence length it reached."""
        with self.lock:
            self.completions += 1
            self.prompt_tokens += timings.prompt_tokens
            self.prompt_cached += timings.reused_tokens
            self.prompt_seconds += timings.prompt_seconds
            self.predicted_tokens += n_generated
            self.predicted_seconds += timings.generate_seconds
            self.n_tokens_max = max(self.n_tokens_max, n_tokens)
            w = self.window
            w[0] += timings.prompt_tokens
            w[1] += timings.prompt_seconds
            w[2] += n_generated
            w[3] += timings.generate_seconds

    def render(self, engine, connections=0, draining=False):
        """The Prometheus text; starts a new averaging window."""
        busy = sum(s.busy for s in engine.slots) if engine else 0
        n_slots = len(engine.slots) if engine else 0
        deferred = engine.waiting if engine else 0
        n_decode, busy_per_decode = engine.decode_counts() if engine else (0, 0)
        with self.lock:
            w, self.window = self.window, [0, 0.0, 0, 0.0]
            values = {
                "prompt_tokens_total": self.prompt_tokens,
                "prompt_tokens_cached_total": self.prompt_cached,
                "prompt_seconds_total": self.prompt_seconds,
                "tokens_predicted_total": self.predicted_tokens,
                "tokens_predicted_seconds_total": self.predicted_seconds,
                "n_decode_total": n_decode,
                "n_tokens_max": self.n_tokens_max,
                "spec_decode_num_draft_tokens_total": 0,    # no speculative decoding here
                "spec_decode_num_accepted_tokens_total": 0,
                "spec_decode_num_drafts_total": 0,
                "prompt_tokens_seconds": w[0] / w[1] if w[1] else 0.0,
                "predicted_tokens_seconds": w[2] / w[3] if w[3] else 0.0,
                "requests_processing": busy,
                "requests_deferred": deferred,
                "n_busy_slots_per_decode": busy_per_decode / max(n_decode, 1),
            }
            lines = []
            for kind, items in (("counter", COUNTERS), ("gauge", GAUGES)):
                for name, help_text in items:
                    _metric(lines, "llamacpp", name, kind, help_text, values[name])
            own = (
                ("slots_total", "gauge", "Parallel slots.", n_slots),
                ("slots_idle", "gauge", "Slots free for a new request.", n_slots - busy),
                ("completions_total", "counter", "Generations finished.", self.completions),
                ("client_disconnects_total", "counter",
                 "Generations stopped because the client went away.", self.disconnects),
                ("requests_rejected_busy_total", "counter",
                 "Requests refused with 503 because the queue was full.", self.rejected_busy),
                ("connections_open", "gauge", "Open client connections.", connections),
                ("draining", "gauge", "1 while shutting down (SIGTERM): no new requests.",
                 int(draining)),
            )
            for name, kind, help_text, value in own:
                _metric(lines, "llamazip", name, kind, help_text, value)
            lines.append("# HELP llamazip:http_requests_total HTTP requests answered, by status.")
            lines.append("# TYPE llamazip:http_requests_total counter")
            for status in sorted(self.requests):
                lines.append(f'llamazip:http_requests_total{{status="{status}"}} '
                             f"{self.requests[status]}")
        return "\n".join(lines) + "\n"


def _metric(lines, prefix, name, kind, help_text, value):
    lines.append(f"# HELP {prefix}:{name} {help_text}")
    lines.append(f"# TYPE {prefix}:{name} {kind}")
    text = f"{value:.6f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
    lines.append(f"{prefix}:{name} {text or '0'}")
