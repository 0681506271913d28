"""Errors of the server: a request we answer with an error, and a client that left."""

STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 405: "invalid_request_error",
                408: "timeout_error", 411: "invalid_request_error", 413: "invalid_request_error",
                431: "invalid_request_error",
                500: "server_error", 501: "not_supported_error", 503: "unavailable_error"}


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


class ClientGone(Exception):
    """The client closed its connection."""

