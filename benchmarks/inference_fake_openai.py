"""A trivial OpenAI-compatible endpoint (no model): streams a canned 8-token answer at once. Used to measure the
load generator itself. Run: uvicorn benchmarks.inference_fake_openai:app"""

import json

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

app = FastAPI()
_CHUNK = json.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "tok"}}]})
_USAGE = json.dumps({"object": "chat.completion.chunk", "choices": [],
                     "usage": {"prompt_tokens": 8, "completion_tokens": 8, "total_tokens": 16}})
_BODY = "".join(f"data: {_CHUNK}\n\n" for _ in range(8)) + f"data: {_USAGE}\n\ndata: [DONE]\n\n"


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@app.get("/v1/models")
async def models() -> dict:
    return {"object": "list", "data": [{"id": "fake", "object": "model"}]}


@app.post("/v1/chat/completions")
async def chat() -> StreamingResponse:
    async def body():
        yield _BODY.encode()

    return StreamingResponse(body(), media_type="text/event-stream")
