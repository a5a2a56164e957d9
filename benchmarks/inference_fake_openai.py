"""A trivial OpenAI-compatible endpoint (no model): answers every chat completion with the same canned stream of
8 one-token chunks, a usage chunk and `[DONE]`, all at once. Used to measure the load generator itself, so it is a
bare ASGI callable (no framework routing or middleware per request): the server must stay cheaper than the Locust
process it serves. Run: uvicorn benchmarks.inference_fake_openai:app"""

import json

ANSWER_TOKENS = 8
_CHUNK = json.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "tok"}}]},
                    separators=(",", ":"))
_USAGE = json.dumps({"object": "chat.completion.chunk", "choices": [],
                     "usage": {"prompt_tokens": 8, "completion_tokens": ANSWER_TOKENS, "total_tokens": 16}},
                    separators=(",", ":"))
STREAM_BODY = ("".join(f"data: {_CHUNK}\n\n" for _ in range(ANSWER_TOKENS))
               + f"data: {_USAGE}\n\ndata: [DONE]\n\n").encode()
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream")]
_ROUTES = {
    ("GET", "/health"): (_JSON, b'{"status":"ok"}', False),
    ("GET", "/v1/models"): (_JSON, b'{"object":"list","data":[{"id":"fake","object":"model"}]}', False),
    # Streamed like a real server's answer: chunked transfer encoding, the body in one piece, then the end.
    ("POST", "/v1/chat/completions"): (_SSE, STREAM_BODY, True),
}


_clients: set[tuple[str, int]] = set()
"""Client (address, port) pairs seen: one per TCP connection the load generator opened."""


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    if scope.get("client"):
        _clients.add(tuple(scope["client"]))
    if scope["path"] == "/connections":  # for tests: does the load generator reuse its connections?
        await send({"type": "http.response.start", "status": 200, "headers": _JSON})
        await send({"type": "http.response.body", "body": str(len(_clients)).encode()})
        return
    route = _ROUTES.get((scope["method"], scope["path"]))
    if route is None:
        await send({"type": "http.response.start", "status": 404, "headers": _JSON})
        await send({"type": "http.response.body", "body": b'{"error":{"message":"not found"}}'})
        return
    while (await receive()).get("more_body"):  # read the request body to its end before answering
        pass
    headers, body, streamed = route
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": streamed})
    if streamed:
        await send({"type": "http.response.body", "body": b""})
