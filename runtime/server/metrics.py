"""Counters for /metrics, in Prometheus's text format."""

import threading


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

    def count_disconnect(self):
        with self.lock:
            self.disconnects += 1

    def count_rejected_busy(self):
        with self.lock:
            self.rejected_busy += 1

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
