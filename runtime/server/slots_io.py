"""/slots/ID?action=save|restore|erase: a slot's cached prompt kept in a file under
--slot-save-path and brought back later.

The file holds the token ids the slot's cache holds (JSON); restoring computes their
keys and values again, which gives the numbers a fresh prompt gives (the session
computes every prompt row the same way, see runtime/session.py), so a restored slot
continues exactly as the saved one would have.
"""

import json
import os
import time
from urllib.parse import parse_qs

from runtime.server.errors import ApiError

FORMAT = "llamazip-slot-1"


def slot_action(app, http):
    engine = app.ready()
    path, _, query = http.path.partition("?")
    try:
        slot_id = int(path.rstrip("/").rsplit("/", 1)[1])
    except ValueError:
        raise ApiError(400, f"{path}: the slot id must be a number") from None
    if not 0 <= slot_id < len(engine.slots):
        raise ApiError(400, f"slot {slot_id} does not exist (0..{len(engine.slots) - 1})")
    action = (parse_qs(query).get("action") or [""])[0]
    if action not in ("save", "restore", "erase"):
        raise ApiError(400, "action must be save, restore or erase (/slots/ID?action=...)")
    body = http.read_json() if action != "erase" else {}
    slot = engine.acquire([], http.client_gone, slot_id)
    try:
        t0 = time.perf_counter()
        if action == "erase":
            n = len(slot.session.tokens)
            slot.session.reset()
            http.send_json(200, {"id_slot": slot_id, "n_erased": n})
            return
        target = _file(app, body)
        if action == "save":
            tokens = list(slot.session.tokens)
            data = json.dumps({"format": FORMAT, "tokens": tokens}).encode("utf-8")
            tmp = target + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
            http.send_json(200, {"id_slot": slot_id, "filename": os.path.basename(target),
                                 "n_saved": len(tokens), "n_written": len(data),
                                 "timings": {"save_ms": _ms(t0)}})
            return
        tokens = _load(target, engine)
        session = slot.session
        session.reset()
        if tokens:
            session.eval(tokens)
        http.send_json(200, {"id_slot": slot_id, "filename": os.path.basename(target),
                             "n_restored": len(tokens), "n_read": os.path.getsize(target),
                             "timings": {"restore_ms": _ms(t0)}})
    finally:
        engine.release(slot)


def _ms(t0):
    return round((time.perf_counter() - t0) * 1000, 3)


def _file(app, body):
    if not app.slot_save_path:
        raise ApiError(501, "slot save and restore are off; start the server with "
                            "--slot-save-path DIR", kind="not_supported_error")
    name = body.get("filename")
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name \
            or "\\" in name or "\0" in name:
        raise ApiError(400, "'filename' must be a plain file name (no folders)",
                       param="filename")
    return os.path.join(app.slot_save_path, name)


def _load(path, engine):
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise ApiError(404, f"no saved slot named {os.path.basename(path)}") from None
    except (OSError, ValueError) as e:
        raise ApiError(400, f"cannot read {os.path.basename(path)}: {e}") from None
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if data.get("format") != FORMAT or not isinstance(tokens, list) or not all(
            isinstance(t, int) and 0 <= t < engine.tokenizer.n_vocab for t in tokens):
        raise ApiError(400, f"{os.path.basename(path)} is not a saved slot of this server")
    if len(tokens) > engine.n_ctx:
        raise ApiError(400, f"the saved slot holds {len(tokens)} tokens; a slot here holds "
                            f"{engine.n_ctx}")
    return tokens
