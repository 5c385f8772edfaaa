"""A stand-in OpenAI completions server for the serve tests: ``python tests/serving_fake_server.py PORT [options]``.

It "generates" what the seeded tiny Llama learnt (``language.continuation``: the next tokens
of the seeded language's cycle), so a working server's tokens equal the torch reference's,
with a fixed delay before the first token (``--ttft-ms``) and between tokens (``--tpot-ms``)
so the tests can check what the client measures. ``--mode`` breaks it on purpose:
``wrong`` (every token shifted by one place in the cycle), ``stuck`` (one token repeated),
``fail`` (HTTP 500), ``no-ids`` (text only; the text is the ids written out).
Requests are served one at a time (a lock), like a server that does not batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infermatrix.case import language  # noqa: E402


def make_app(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from aiohttp import web

    lock = asyncio.Lock()
    seen: dict[str, int] = {"completions": 0, "connections": 0, "text_prompts": 0}
    peers: set[object] = set()
    tokenizer = None
    if args.tokenizer:
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)

    def text_of(token: int) -> str:
        return f" {token}" if tokenizer is None else tokenizer.decode([token])

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(seen)

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": args.model, "object": "model"}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen["completions"] += 1
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        seen["connections"] = len(peers)
        if args.mode == "fail":
            return web.Response(status=500, text="broken on purpose")
        prompt = body["prompt"]
        if isinstance(prompt, str):  # a prompt sent as text: the ids written out, or the tokenizer's
            seen["text_prompts"] += 1
            if tokenizer is not None:
                prompt = tokenizer.encode(prompt, add_special_tokens=False)
            elif prompt.split() and all(part.isdigit() for part in prompt.split()):
                prompt = prompt.split()
            else:  # a real tokenizer's text: continue from the language's first token
                prompt = [int(language.cycle(args.seed, args.vocab)[0])]
        ids = [int(t) for t in prompt]
        new = int(body["max_tokens"])
        tokens = language.continuation([ids], new + 1, args.seed, args.vocab)[0]
        tokens = tokens[1:new + 1] if args.mode == "wrong" else tokens[:new]
        if args.mode == "stuck":
            tokens = [tokens[0]] * new
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        async with lock:
            await asyncio.sleep(args.ttft_ms / 1e3)
            for index, token in enumerate(tokens):
                if index:
                    await asyncio.sleep(args.tpot_ms / 1e3)
                choice = {"index": 0, "text": text_of(token)}
                if args.mode != "no-ids" and body.get("return_token_ids"):
                    choice["token_ids"] = [token]
                await response.write(b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n")
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(tokens)}
        await response.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await asyncio.sleep(0.005)  # the body's end comes apart from [DONE], as it can from a real server
        await response.write_eof()
        return response

    app = web.Application()
    app.add_routes([web.get("/health", health), web.get("/v1/models", models), web.get("/stats", stats),
                    web.post("/v1/completions", completions)])
    return app


def main() -> None:
    from aiohttp import web

    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--tpot-ms", type=float, default=5.0)
    parser.add_argument("--mode", choices=("ok", "wrong", "stuck", "fail", "no-ids"), default="ok")
    parser.add_argument("--model", default="tinyllama")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--pid-file", default=None, help="write this process's pid here once serving")
    parser.add_argument("--tokenizer", default=None, help="a model folder: its tokenizer writes the text")
    args = parser.parse_args()
    if args.pid_file:
        import os

        Path(args.pid_file).write_text(str(os.getpid()))
    web.run_app(make_app(args), host="127.0.0.1", port=args.port, print=None, access_log=None, shutdown_timeout=1)


if __name__ == "__main__":
    main()
