"""A chat reply generated on a slot: the request's parser fed as the pieces come, so
the endpoints that answer in other shapes (Anthropic, Responses) get parsed deltas."""

from runtime.server.api import Request, generate


class Finished:
    """What the other API shapes read of a finished generation (the slot's session may
    serve another request by then): its token ids, why it ended, its timings."""

    def __init__(self, outcome):
        self.generated = outcome.tokens
        self.finish_reason = outcome.finish_reason
        self.timings = outcome.session_timings


def generate_reply(app, http, request, sampling, n_predict, stops, on_deltas=None,
                   on_session=None):
    """Generate the reply to `request` on a slot; `on_deltas(deltas)` gets the streamed
    deltas as they come (called for every token, with [] while nothing is new).
    Returns (Finished, message)."""
    parser = request.stream()

    def on_piece(piece, ids, slot):
        if on_deltas is not None:
            on_deltas(parser.feed(piece))

    req = Request.of_chat(app, request, sampling, stops)
    outcome = generate(app, http, req, request.prompt_tokens, n_predict, on_piece,
                       on_session=on_session)
    if on_deltas is not None:
        on_deltas(parser.finish())
    else:
        parser.parse_all(outcome.text)
    return Finished(outcome), parser.message


def matched_stop(tokenizer, session, stops):
    """The stop string that ended generation, or None."""
    if session.finish_reason != "stop" or not stops:
        return None
    if session.generated and session.generated[-1] in tokenizer.eog_ids:
        return None
    text = tokenizer.decode(session.generated)
    found = [(text.find(s), s) for s in stops if s in text]
    return min(found)[1] if found else None
