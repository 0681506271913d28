"""The engine: N slots (a Session each, with its own KV cache over the shared
weights), the queue of requests waiting for one, and the Batcher.

Parallel slots progress together through the Batcher: a slot's single-token decode
step is handed to one engine thread that runs the steps of all generating slots as
one batched forward pass (Model.forward_batch), so N streams cost little more than
one on memory-bound matmuls. Prompt prefill runs directly under the same compute lock,
so a long prompt only pauses the others between its chunks.
"""

import collections
import threading
import time

from runtime.server.errors import ApiError, ClientGone
from runtime.session import Session

GATHER_MAX_SECONDS = 0.05   # longest a decode step waits for the other slots to join it


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


class FairLock:
    """A lock taken in the order it was asked for. threading.Lock lets the thread
    that just released it take it again before a waiter wakes, so a long prompt's
    chunks could follow one another while the other slots' decode steps wait; here
    a step that asked first goes first, and a prompt pauses the others for one
    chunk at a time."""

    def __init__(self):
        self.cond = threading.Condition(threading.Lock())
        self.queue = collections.deque()

    def __enter__(self):
        me = object()
        with self.cond:
            self.queue.append(me)
            while self.queue[0] is not me:
                self.cond.wait()
        return self

    def __exit__(self, *exc):
        with self.cond:
            self.queue.popleft()
            self.cond.notify_all()


class Batcher:
    """Runs the decode steps of all generating slots as one batched forward pass."""

    def __init__(self, model, slots):
        self.model = model
        self.slots = slots
        self.compute = FairLock()           # one forward pass at a time, batched or not
        self.cond = threading.Condition()
        self.pending = []
        self.stopping = False
        self.last_step = 0.0
        self.steps = 0
        self.rows = 0
        self.n_decode = 0           # forward passes, batched steps and prompt chunks (metrics)
        self.n_busy = 0             # busy slots summed over those passes
        threading.Thread(target=self._loop, name="batcher", daemon=True).start()

    def step(self, slot, twin, token, pos):
        """Logits (one row) of `token` at `pos` in `twin`'s cache, computed with the others'."""
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

    def count_decode(self):
        """One more forward pass (called under the compute lock)."""
        self.n_decode += 1
        self.n_busy += sum(s.busy for s in self.slots)

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
                self.count_decode()
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
            self.batcher.count_decode()
            return self.twin.forward(tokens, pos0, last_only, hidden)


class Engine:
    """The model, its slots, and the queue of requests waiting for one."""

    def __init__(self, model, tokenizer, n_slots, queue_size, batch_size=512, slot_ctx=None):
        self.model = model
        self.tokenizer = tokenizer
        self.slots = []
        self.batcher = Batcher(model, self.slots)
        self.slot_ctx = slot_ctx or model.n_ctx
        for i in range(n_slots):
            slot_model = SlotModel(model.with_own_cache(self.slot_ctx), self.batcher)
            slot = Slot(i, Session(slot_model, tokenizer, batch_size=batch_size))
            slot_model.slot = slot
            self.slots.append(slot)
        self.queue_size = queue_size
        self.waiting = 0
        self.cond = threading.Condition()
        self.stopping = False

    @property
    def n_ctx(self):
        """The context of one slot: what one request may use."""
        return self.slot_ctx

    def decode_counts(self):
        """(forward passes so far, busy slots summed over them), for /metrics."""
        return self.batcher.n_decode, self.batcher.n_busy

    def idle_slots(self):
        return sum(not s.busy for s in self.slots)

    def acquire(self, prompt_tokens, client_gone, slot_id=None):
        """A free slot (`slot_id`, or the one whose cache shares most with the prompt),
        waiting in the queue if need be; 503 when the queue is full."""
        if slot_id is not None and not 0 <= slot_id < len(self.slots):
            raise ApiError(400, f"id_slot {slot_id} does not exist (0..{len(self.slots) - 1})",
                           param="id_slot")
        with self.cond:
            if not self._free(slot_id) and self.waiting >= self.queue_size:
                raise ApiError(503, f"the server is busy: all {len(self.slots)} slots are in use "
                                    f"and {self.waiting} requests are waiting; retry later",
                               code="server_busy")
            self.waiting += 1
            try:
                while not self._free(slot_id):
                    if self.stopping:
                        raise ApiError(503, "the server is shutting down")
                    self.cond.wait(0.25)
                    if client_gone():
                        raise ClientGone()
            finally:
                self.waiting -= 1
            slot = max(self._free(slot_id),
                       key=lambda s: _common_prefix(s.session.tokens, prompt_tokens))
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

    def _free(self, slot_id=None):
        return [s for s in self.slots if not s.busy and (slot_id is None or s.id == slot_id)]

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
