"""Errors of the server: a request we answer with an error, and a client that left."""

STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
                408: "timeout_error", 411: "invalid_request_error", 413: "invalid_request_error",
                431: "invalid_request_error",
                500: "server_error", 501: "not_supported_error", 503: "unavailable_error"}


class ApiError(Exception):
    """A request we answer with an error: the status and OpenAI's error object."""

    def __init__(self, status, message, param=None, code=None, kind=None, extra=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind            # the error's type when not the status's (llama.cpp's)
        self.extra = extra or {}    # more fields for the error object

    def body(self):
        error = {"message": self.message,
                 "type": self.kind or STATUS_TYPES.get(self.status, "error"),
                 "param": self.param, "code": self.code}
        error.update(self.extra)
        return {"error": error}


def context_exceeded(n_prompt, n_ctx, param):
    """llama-server's error for a prompt that does not fit a slot's context."""
    return ApiError(400, f"the request ({n_prompt} tokens) exceeds the available context size "
                         f"({n_ctx} tokens); shorten it or raise -c", param=param,
                    code="context_length_exceeded", kind="exceed_context_size_error",
                    extra={"n_prompt_tokens": n_prompt, "n_ctx": n_ctx})


class ClientGone(Exception):
    """The client closed its connection."""

