"""A chat reply generated on a slot: the request's parser fed as the pieces come, so
the endpoints that answer in other shapes (Anthropic, Responses) get parsed deltas."""

from runtime.server.api import generate


def generate_reply(app, http, request, sampling, n_predict, stops, on_deltas=None,
                   on_session=None):
    """Generate the reply to `request` on a slot; `on_deltas(deltas)` gets the streamed
    deltas as they come (called for every token, with [] while nothing is new).
    Returns (session, message)."""
    parser = request.stream()

    def on_piece(piece, ids):
        if on_deltas is not None:
            on_deltas(parser.feed(piece))

    session, text, _ = generate(app, http, request.prompt_tokens, sampling, n_predict, stops,
                                request.constraint, on_piece,
                                shown_tokens=request.shown_tokens, on_session=on_session)
    if on_deltas is not None:
        on_deltas(parser.finish())
    else:
        parser.parse_all(text)
    return session, parser.message


def matched_stop(tokenizer, session, stops):
    """The stop string that ended generation, or None."""
    if session.finish_reason != "stop" or not stops:
        return None
    if session.generated and session.generated[-1] in tokenizer.eog_ids:
        return None
    text = tokenizer.decode(session.generated)
    found = [(text.find(s), s) for s in stops if s in text]
    return min(found)[1] if found else None
