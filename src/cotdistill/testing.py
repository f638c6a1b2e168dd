"""A small OpenAI-compatible chat server for tests and benchmarks: fixed latency, scripted
replies, and injected faults (429, 500, hangs past the client's timeout, truncated JSON
bodies, dropped connections) at fixed shares.

It speaks plain HTTP/1.1 with keep-alive on asyncio streams, so one core serves thousands
of requests per second and a benchmark measures the client, not the server. Run it alone
with `python -m cotdistill.testing --port 8000 --latency 0.1`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

FAULTS = ("429", "500", "timeout", "truncated", "drop")
Reply = Callable[[list[dict[str, str]]], "str | tuple[str, str] | int"]  # text, (text, finish_reason), or an HTTP error status


def fingerprint(messages: list[dict[str, str]], seed: Any) -> str:
    """What identifies a request to the server (its content and seed)."""
    return hashlib.sha256(json.dumps([messages, seed], sort_keys=True).encode()).hexdigest()[:16]


def default_reply(messages: list[dict[str, str]]) -> str:
    return "Some reasoning. The answer is 0."


class StubServer:
    def __init__(self, reply: Reply = default_reply, latency: float = 0.0, faults: dict[str, float] | None = None,
                 hang: float = 30.0, seed: int = 0, host: str = "127.0.0.1", port: int = 0,
                 reject_max_tokens: bool = False):
        unknown = set(faults or {}) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; known: {FAULTS}")
        self.reply, self.latency, self.faults, self.hang = reply, latency, faults or {}, hang
        self.reject_max_tokens = reject_max_tokens  # as OpenAI's newer models: only max_completion_tokens
        self.rng = random.Random(seed)
        self.host, self.port = host, port
        self.served: Counter[str] = Counter()  # fingerprint -> complete 200 replies sent
        self.injected: Counter[str] = Counter()
        self.requests = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> str:
        """Serve from a background thread; returns the base URL."""
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.open())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.base_url

    def stop(self) -> None:
        """Close the listener and every open connection, then the loop."""
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    async def _shutdown(self) -> None:
        if self._server:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # HTTP --------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    break
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                if not await self._respond(request_line.decode("latin-1"), body, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _respond(self, request_line: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False closes the connection."""
        self.requests += 1
        if request_line.split(" ")[1:2] != ["/v1/chat/completions"]:
            self._write(writer, 404, {"error": {"message": "only /v1/chat/completions", "type": "not_found"}})
            return True
        request = json.loads(body)
        if self.reject_max_tokens and "max_tokens" in request:
            self._write(writer, 400, {"error": {
                "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                           "Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
                "param": "max_tokens", "code": "unsupported_parameter"}})
            return True
        fault = self._fault()
        if self.latency:
            await asyncio.sleep(self.latency)
        if fault:
            self.injected[fault] += 1
        if fault == "drop":
            return False
        if fault == "timeout":
            await asyncio.sleep(self.hang)
            return False
        if fault == "429":
            self._write(writer, 429, {"error": {"message": "rate limited", "type": "rate_limit"}}, {"retry-after": "0"})
            return True
        if fault == "500":
            self._write(writer, 500, {"error": {"message": "internal error", "type": "server_error"}})
            return True
        result = self.reply(request["messages"])
        if isinstance(result, int):
            self._write(writer, result, {"error": {"message": f"scripted error {result}", "type": "invalid_request"}})
            return True
        payload = self._completion(request, result)
        if fault == "truncated":
            raw = json.dumps(payload).encode()
            self._write_raw(writer, 200, raw[: len(raw) // 2])
            return True
        self.served[fingerprint(request["messages"], request.get("seed"))] += 1
        self._write(writer, 200, payload)
        return True

    def _fault(self) -> str | None:
        draw = self.rng.random()
        for fault in FAULTS:
            share = self.faults.get(fault, 0.0)
            if draw < share:
                return fault
            draw -= share
        return None

    def _completion(self, request: dict[str, Any], result: str | tuple[str, str]) -> dict[str, Any]:
        text, finish = (result, "stop") if isinstance(result, str) else result
        words = text.split()
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": finish, "logprobs": None}
        k = request.get("top_logprobs") or 0
        if request.get("logprobs"):
            choice["logprobs"] = {"content": [
                {"token": w, "logprob": -0.25, "bytes": None,
                 "top_logprobs": [{"token": w, "logprob": -0.25, "bytes": None}]
                 + [{"token": f"alt{j}", "logprob": -2.0 - j, "bytes": None} for j in range(1, k)]}
                for w in words]}
        prompt_tokens = sum(len(m["content"].split()) for m in request["messages"])
        return {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": request.get("model", ""),
                "choices": [choice],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                          "total_tokens": prompt_tokens + len(words)}}

    def _write(self, writer: asyncio.StreamWriter, status: int, payload: dict[str, Any],
               headers: dict[str, str] | None = None) -> None:
        self._write_raw(writer, status, json.dumps(payload).encode(), headers)

    @staticmethod
    def _write_raw(writer: asyncio.StreamWriter, status: int, raw: bytes, headers: dict[str, str] | None = None) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(raw)}\r\n"
                     f"{extra}\r\n".encode() + raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    args = parser.parse_args()
    server = StubServer(latency=args.latency, host=args.host, port=args.port)

    async def serve() -> None:
        await server.open()
        print(f"serving {server.base_url}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
