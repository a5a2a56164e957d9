"""The pre-rendered SSE text chunk is byte for byte the event the generic encoder produces."""

from __future__ import annotations

import json

import pytest

from workloads.serving.protocol import TextChunkEncoder, chat_chunk, completion_chunk, sse


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("text", ["a", " ", 'quote " backslash \\ newline \n', "\u00e9", "\x00nul", "\U0001f600"])
def test_text_chunk_encoder_equals_the_generic_chunk(chat, text):
    encode = TextChunkEncoder("cmpl-abc", "dcforge-gpt", chat)
    chunk = (chat_chunk("cmpl-abc", "dcforge-gpt", {"content": text}, None) if chat
             else completion_chunk("cmpl-abc", "dcforge-gpt", text, None))
    chunk["created"] = encode.created
    assert encode(text) == sse(chunk)
    assert json.loads(encode(text)[len(b"data: "):])["choices"][0]["delta" if chat else "text"] == \
        ({"content": text} if chat else text)
