"""The server (`--server`): http (the thin HTTP layer and `serve`), api and
embeddings (the endpoints), params (request fields to parameters), engine (slots,
batching, the queue), metrics, app (shared state), errors."""
