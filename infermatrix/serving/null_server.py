"""``python -m infermatrix.serving.null_server PORT``: an OpenAI-style completion server that does no work.

It streams ``max_tokens`` events as fast as it can (token id 4, text "x"), so what a
client measures against it is the client's own floor: its HTTP, event parsing and
timestamping, plus the loopback. The serve scenario states that floor beside every
served case (``client_floor``), and the tests use this server to check the client.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def make_app() -> Any:
    from aiohttp import web

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "null", "object": "model"}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        tokens = int(body.get("max_tokens", 16))
        prompt = body.get("prompt") or []
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(tokens):
            event = {"object": "text_completion", "choices": [{"index": 0, "text": "x", "token_ids": [4]}]}
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        usage = {"prompt_tokens": len(prompt), "completion_tokens": tokens}
        await response.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.add_routes([web.get("/health", health), web.get("/v1/models", models),
                    web.post("/v1/completions", completions)])
    return app


def main(argv: list[str]) -> int:
    from aiohttp import web

    web.run_app(make_app(), host="127.0.0.1", port=int(argv[0]), print=None, access_log=None, shutdown_timeout=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
