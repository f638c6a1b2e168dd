"""Teachers behind any OpenAI-compatible chat server (OpenAI, vLLM, SGLang, llama.cpp
server, Ollama): POST /chat/completions over aiohttp, or /completions with the prompt as
plain text (`endpoint="completions"`) for base models that have no chat template.

Why not the `openai` client: measured against a fixed-latency server at concurrency 64
(benchmarks/annotation_throughput.py), its per-request overhead held the client to 85% of
the server's capacity through its low-level `post` and under half through
`chat.completions.create` (which re-walks every few-shot body against its schema);
aiohttp reaches 95%. Its retries also skip a 200 whose JSON body is cut short.

Our retry loop covers 429, 5xx, timeouts, dropped connections and malformed bodies with
exponential backoff and full jitter (honouring Retry-After), and gives up on a request after
`max_retries`, leaving it undone for the next run rather than storing a failure. Each
retry's cause is counted (`retry_causes`: an HTTP status, a timeout, a connection error),
so a run can say why it retried, and what to change (`retry_hint`).

Concurrency is a semaphore; requests- and tokens-per-minute limits are token buckets; the
budget reserves each request's worst case (prompt estimate + max_tokens) before sending,
so the run stops cleanly *before* it could overspend, never after, and within one
request's worst case of the cap.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cotdistill.config import setting
from cotdistill.errors import CotdistillError, at_least
from cotdistill.models.contract import Completion, Messages

PREFIX = "openai:"


@dataclass(frozen=True)
class APIConfig:
    model: str
    base_url: str | None = setting(None, "server URL, e.g. http://localhost:8000/v1 (default $OPENAI_BASE_URL, "
                                         "else OpenAI's)")
    api_key_env: str = setting("OPENAI_API_KEY", "environment variable holding the API key (local servers take "
                                                 "any: 'EMPTY' is sent if unset)")
    concurrency: int = setting(16, "requests in flight")
    requests_per_minute: float | None = setting(None, "requests per minute limit")
    tokens_per_minute: float | None = setting(None, "tokens per minute limit")
    timeout: float = setting(120.0, "seconds per request attempt")
    max_retries: int = setting(8, "retries per request (429, 5xx, timeouts, resets)")
    backoff: float = setting(1.0, "the first retry waits up to this many seconds; doubles each time")
    max_backoff: float = setting(60.0, "longest wait between retries")
    top_logprobs: int = setting(0, "store the top-k log-probs of each generated token (for distribution matching)")
    price_input: float = setting(0.0, "USD per million prompt tokens")
    price_output: float = setting(0.0, "USD per million completion tokens")
    max_cost: float | None = setting(None, "hard cap on the job's spend in USD (earlier runs of the same job count)")
    max_tokens: int | None = setting(None, "hard cap on the job's prompt + completion tokens")
    endpoint: str = setting("chat", "chat (/chat/completions) or completions (/completions: the prompt as plain "
                                    "text, a blank line ends the reply; for base models without a chat template)")

    def __post_init__(self) -> None:
        if "://" in self.model:
            raise CotdistillError(f"openai:{self.model}: give the model's name after openai: and the server with "
                                  "--base-url URL")
        for option, value, low, strictly in (
                ("--concurrency", self.concurrency, 1, False), ("--timeout", self.timeout, 0, True),
                ("--max-retries", self.max_retries, 0, False), ("--rpm", self.requests_per_minute, 0, True),
                ("--tpm", self.tokens_per_minute, 0, True), ("--top-logprobs", self.top_logprobs, 0, False),
                ("--price-input", self.price_input, 0, False), ("--price-output", self.price_output, 0, False),
                ("--max-cost", self.max_cost, 0, False), ("--max-tokens", self.max_tokens, 1, False)):
            at_least(option, value, low, strictly=strictly)
        if self.endpoint not in ENDPOINTS:
            raise CotdistillError(f"--endpoint {self.endpoint}: one of {', '.join(ENDPOINTS)}")
        if (not self.base_url and not os.environ.get("OPENAI_BASE_URL")
                and not os.environ.get(self.api_key_env)):
            raise CotdistillError(f"openai:{self.model} goes to {DEFAULT_BASE_URL}, which needs a key: set "
                                  f"${self.api_key_env} (or --api-key-env), or give your server with --base-url")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_input + completion_tokens * self.price_output) / 1e6


class GiveUp(Exception):
    """A request failed `max_retries + 1` times; it stays undone. The message says why."""


class MalformedReply(Exception):
    """A 200 whose body is valid JSON but not a chat completion."""


class Refused(Exception):
    """A 4xx for this request alone (e.g. the prompt is too long): not retried, not stored."""


class Fatal(Exception):
    """An answer no retry can change for any request (bad key, no such model or route)."""


FATAL = (401, 403, 404)
REFUSALS_BEFORE_STOP = 5  # refused requests, none answered: a bad setting, not a bad prompt
DEFAULT_BASE_URL = "https://api.openai.com/v1"
ENDPOINTS = ("chat", "completions")


def plain_prompt(messages: Messages) -> str:
    """A conversation as the plain text a base model continues: each user turn, then
    `Answer:` and the reply, the last `Answer:` left open (the layout local base models get)."""
    parts = []
    for message in messages:
        if message["role"] == "assistant":
            parts.append(f"Answer: {message['content']}\n\n")
        else:
            parts.append(f"{message['content']}\n")
    return "".join(parts) + "Answer:"


class Budget:
    """Spend so far plus reservations in flight; a request is sent only if its worst case
    (prompt estimate + max_tokens) fits. A request that does not fit waits while others are
    in flight, since they mostly settle well under their worst case; the budget is spent
    only when a request does not fit with nothing in flight. So a run stops within one
    request's worst case of the cap, and never past it."""

    def __init__(self, config: APIConfig, spent_cost: float = 0.0, spent_tokens: int = 0):
        self.config = config
        self.cost, self.tokens = spent_cost, spent_tokens
        self.reserved_cost, self.reserved_tokens, self.in_flight = 0.0, 0, 0
        self.exhausted = False
        self._settled = asyncio.Condition()

    def _fits(self, cost: float, tokens: int) -> bool:
        return ((self.config.max_cost is None or self.cost + self.reserved_cost + cost <= self.config.max_cost)
                and (self.config.max_tokens is None or self.tokens + self.reserved_tokens + tokens <= self.config.max_tokens))

    async def reserve(self, prompt_tokens: int, max_new_tokens: int) -> tuple[float, int] | None:
        cost = self.config.cost(prompt_tokens, max_new_tokens)
        tokens = prompt_tokens + max_new_tokens
        async with self._settled:
            while not self._fits(cost, tokens):
                if self.exhausted or not self.in_flight:
                    self.exhausted = True
                    return None
                await self._settled.wait()
            self.reserved_cost += cost
            self.reserved_tokens += tokens
            self.in_flight += 1
        return cost, tokens

    async def settle(self, reservation: tuple[float, int], completion: Completion | None) -> None:
        async with self._settled:
            self.reserved_cost -= reservation[0]
            self.reserved_tokens -= reservation[1]
            self.in_flight -= 1
            if completion is not None:
                self.cost += completion.cost
                self.tokens += completion.prompt_tokens + completion.completion_tokens
            self._settled.notify_all()


class RateLimiter:
    """A token bucket refilled continuously at the per-minute rate, holding at most ten
    seconds' allowance: a burst never spends a whole minute's quota at once, which servers
    that enforce the limit over shorter windows would refuse."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * 10)
        self.level = self.capacity
        self.updated = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self, amount: float = 1.0) -> None:
        amount = min(amount, self.capacity)
        async with self.lock:
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
                self.updated = now
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)


class PromptSizer:
    """Upper-bounds a prompt's token count before sending, from its UTF-8 size: one token per
    byte (the BPE worst case) until the server reports usage, then the highest tokens-per-byte
    ratio seen so far plus a 20% margin."""

    def __init__(self) -> None:
        self.tokens_per_byte = 1.0
        self.seen = False

    @staticmethod
    def _bytes(messages: Messages) -> int:
        return sum(len(m["content"].encode()) + 8 for m in messages)  # + role and template tokens

    def estimate(self, messages: Messages) -> int:
        return int(self._bytes(messages) * self.tokens_per_byte) + 16

    def observe(self, messages: Messages, prompt_tokens: int) -> None:
        ratio = 1.2 * prompt_tokens / max(self._bytes(messages), 1)  # margin for prompts unlike those seen
        self.tokens_per_byte = max(self.tokens_per_byte, ratio) if self.seen else ratio
        self.seen = True


class OpenAITeacher:
    def __init__(self, config: APIConfig, on_retry: Callable[[str], None] | None = None):
        self.config = config
        self.on_retry = on_retry  # called with each retry's cause, e.g. to show it in a progress bar
        self.retry_causes: Counter[str] = Counter()
        self.url = (config.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.headers = {"Authorization": f"Bearer {os.environ.get(config.api_key_env) or 'EMPTY'}",
                        "Content-Type": "application/json"}
        self.sizer = PromptSizer()
        self.retries = 0
        self.refusal: str | None = None  # the first 4xx refusal's message, for the summary
        self.failure: str | None = None  # why the first request that exhausted its retries failed
        self.token_limit = "max_tokens"  # "max_completion_tokens" once a server asks for it (OpenAI's newer models)

    def run(self, jobs: Sequence[tuple[Messages, int]], max_new_tokens: int, temperature: float,
            stop: Sequence[str], budget: Budget, on_result: Callable[[int, Completion], None]) -> dict[str, int]:
        """Send every (messages, seed) job; `on_result(index, completion)` as each one finishes.

        Returns counts: done, failed (retries exhausted), refused (a 4xx for that request;
        it stays pending, so a misconfigured run never marks its requests done), skipped
        (budget reached).
        """
        return asyncio.run(self._run(jobs, max_new_tokens, temperature, stop, budget, on_result))

    async def _run(self, jobs: Sequence[tuple[Messages, int]], max_new_tokens: int, temperature: float,
                   stop: Sequence[str], budget: Budget, on_result: Callable[[int, Completion], None]) -> dict[str, int]:
        import aiohttp

        counts = {"done": 0, "failed": 0, "refused": 0, "skipped": 0}
        gate = asyncio.Semaphore(self.config.concurrency)
        rpm = RateLimiter(self.config.requests_per_minute) if self.config.requests_per_minute else None
        tpm = RateLimiter(self.config.tokens_per_minute) if self.config.tokens_per_minute else None
        fatal: list[Fatal] = []
        connector = aiohttp.TCPConnector(limit=self.config.concurrency)
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)

        async def one(session: aiohttp.ClientSession, index: int, messages: Messages, seed: int) -> None:
            async with gate:
                if fatal or budget.exhausted:
                    counts["skipped"] += 1
                    return
                estimate = self.sizer.estimate(messages)
                reservation = await budget.reserve(estimate, max_new_tokens)
                if reservation is None:
                    counts["skipped"] += 1
                    return
                completion = None
                try:
                    if rpm:
                        await rpm.acquire()
                    if tpm:
                        await tpm.acquire(estimate + max_new_tokens)
                    completion = await self._complete(session, messages, seed, max_new_tokens, temperature, stop)
                except GiveUp as error:
                    counts["failed"] += 1
                    self.failure = self.failure or str(error)
                except Refused as error:
                    counts["refused"] += 1
                    self.refusal = self.refusal or str(error)
                    if counts["refused"] >= REFUSALS_BEFORE_STOP and not counts["done"]:  # the same 400 for all
                        fatal.append(Fatal(f"the first {counts['refused']} requests were all refused ({error})"))
                except Fatal as error:
                    fatal.append(error)
                finally:
                    await budget.settle(reservation, completion)
                if completion is not None:
                    counts["done"] += 1
                    on_result(index, completion)

        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self.headers) as session:
            await asyncio.gather(*(one(session, i, m, s) for i, (m, s) in enumerate(jobs)))
        if fatal:
            raise CotdistillError(f"teacher {self.config.model} at {self.url}: {fatal[0]}")
        return counts

    async def _complete(self, session: Any, messages: Messages, seed: int, max_new_tokens: int,
                        temperature: float, stop: Sequence[str]) -> Completion:
        """One request with retries: 429 (honouring Retry-After), 5xx, 408/409, timeouts,
        connection errors and malformed bodies are retried; other 4xx are final."""
        import aiohttp

        chat = self.config.endpoint == "chat"
        request: dict[str, Any] = {"model": self.config.model, "temperature": temperature, "seed": seed}
        request.update({"messages": messages} if chat else {"prompt": plain_prompt(messages)})
        if not chat:  # in the plain layout a blank line ends a reply: a base model goes on to a next question
            stop = list(dict.fromkeys(["\n\n", *stop]))
        if stop:
            request["stop"] = list(stop)[:4]  # OpenAI accepts at most four
        if self.config.top_logprobs:
            request.update(logprobs=True, top_logprobs=self.config.top_logprobs) if chat else \
                request.update(logprobs=self.config.top_logprobs)
        path = "/chat/completions" if chat else "/completions"
        limit = self.token_limit
        body = json.dumps({**request, limit: max_new_tokens})
        reason = "no attempt"
        for attempt in range(self.config.max_retries + 1):
            started = time.perf_counter()
            wait = None
            try:
                async with session.post(f"{self.url}{path}", data=body) as response:
                    status, raw = response.status, await response.read()
                    retry_after = response.headers.get("retry-after")
                if status == 200:
                    reply = json.loads(raw)
                    return (self._completion(messages, reply, time.perf_counter() - started) if chat
                            else self._text_completion(messages, reply, time.perf_counter() - started))
                if status in FATAL:
                    raise Fatal(f"HTTP {status}: {_error_message(raw)}")
                if status == 429:
                    wait = _seconds(retry_after)
                elif status < 500 and status not in (408, 409):
                    message = _error_message(raw)
                    if status == 400 and limit == "max_tokens" and "max_completion_tokens" in message:
                        self.token_limit = "max_completion_tokens"  # remembered for every later request
                        return await self._complete(session, messages, seed, max_new_tokens, temperature, stop)
                    raise Refused(f"HTTP {status}: {message}")
                reason, cause = f"HTTP {status}: {_error_message(raw)}", f"HTTP {status}"
            except asyncio.TimeoutError:
                reason, cause = f"no complete reply within {self.config.timeout:g} s", "timeout"
            except aiohttp.ClientError as error:  # connection refused, reset, dropped
                reason, cause = f"{type(error).__name__}: {error}", f"connection error ({type(error).__name__})"
            except (ValueError, MalformedReply) as error:
                reason, cause = f"a reply that is not a chat completion ({type(error).__name__})", "malformed reply"
            if attempt == self.config.max_retries:
                break
            self.retries += 1
            self.retry_causes[cause] += 1
            if self.on_retry:
                self.on_retry(cause)
            cap = min(self.config.max_backoff, self.config.backoff * 2**attempt)
            # a server's wait gets up to 25% jitter, so the requests it told to wait do not all return at once
            await asyncio.sleep(wait * random.uniform(1.0, 1.25) if wait is not None else random.uniform(0, cap))
        raise GiveUp(f"{self.url}: {reason} (after {self.config.max_retries + 1} attempts)")

    def retry_hint(self) -> str | None:
        """What the retries so far suggest changing, or None: timeouts and 503s with several
        requests in flight are mostly a server with fewer slots than `concurrency`."""
        if not self.retry_causes:
            return None
        causes = ", ".join(f"{cause} x{count}" for cause, count in self.retry_causes.most_common())
        busy = self.retry_causes["timeout"] + self.retry_causes["HTTP 503"] + self.retry_causes["HTTP 429"]
        if busy and self.config.concurrency > 1:
            return (f"retries: {causes}; {self.config.concurrency} requests in flight may exceed the server's slots "
                    "(llama.cpp: --parallel N, vLLM: --max-num-seqs): lower --concurrency to them, or raise --timeout")
        if busy:
            return f"retries: {causes}; the server answers slowly: raise --timeout"
        return f"retries: {causes}"

    def _text_completion(self, messages: Messages, data: dict[str, Any], seconds: float) -> Completion:
        """A /completions reply: its `text`, and its log-probs in that endpoint's older layout."""
        try:
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            prompt_tokens, completion_tokens = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
            logprobs = None
            scores = choice.get("logprobs") or {}
            if self.config.top_logprobs and scores.get("tokens"):
                logprobs = [[token, logprob, sorted(([t, lp] for t, lp in (top or {}).items()), key=lambda p: -p[1])]
                            for token, logprob, top in zip(scores["tokens"], scores["token_logprobs"],
                                                           scores.get("top_logprobs") or [])]
            text = choice["text"]
        except (TypeError, KeyError, IndexError, AttributeError) as error:
            raise MalformedReply(repr(error)) from None
        self.sizer.observe(messages, prompt_tokens)
        return Completion(text or "", prompt_tokens, completion_tokens, choice.get("finish_reason") or "stop", seconds,
                          self.config.cost(prompt_tokens, completion_tokens), logprobs)

    def _completion(self, messages: Messages, data: dict[str, Any], seconds: float) -> Completion:
        try:
            choice = data["choices"][0]
            text = _content(choice["message"]["content"])
            usage = data.get("usage") or {}
            prompt_tokens, completion_tokens = (_count(usage, "prompt_tokens"), _count(usage, "completion_tokens"))
            logprobs = None
            if self.config.top_logprobs and (choice.get("logprobs") or {}).get("content"):
                logprobs = [[t["token"], _logprob(t["logprob"]),
                             [[top["token"], _logprob(top["logprob"])] for top in t.get("top_logprobs") or []]]
                            for t in choice["logprobs"]["content"]]
        except (TypeError, KeyError, IndexError, AttributeError) as error:
            raise MalformedReply(repr(error)) from None
        self.sizer.observe(messages, prompt_tokens)
        return Completion(text, prompt_tokens, completion_tokens, choice.get("finish_reason") or "stop", seconds,
                          self.config.cost(prompt_tokens, completion_tokens), logprobs)


def _count(usage: dict[str, Any], key: str) -> int:
    """A token count as the server reports it: an integer >= 0 (0 where it reports none). Anything
    else (negative, fractional, text) makes the reply malformed, so a lying server can never
    lower the spend a budget counts."""
    value = usage.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedReply(f"usage.{key} is {value!r}, not a token count")
    return value


def _logprob(value: Any) -> float:
    """A log-probability: a number <= 0 (a rounding error's worth above is let through); NaN
    or text would train a kd student to `done` on nothing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value <= 1e-3:
        raise MalformedReply(f"log-prob {value!r} is not a number <= 0")
    return float(value)


def _content(content: Any) -> str:
    """The reply's text: a string, null, or a list of text parts (the newer content-parts form)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise MalformedReply(f"message content is {type(content).__name__} {str(content)[:60]!r}, not text")


def _error_message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw[:200].decode("utf-8", "replace")


def _seconds(retry_after: str | None) -> float | None:
    """Retry-After in seconds or as an HTTP date (RFC 9110 allows both), within [0, 60]."""
    if retry_after is None:
        return None
    try:
        seconds = float(retry_after)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(retry_after).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(60.0, max(0.0, seconds))


class APIModel:
    """An OpenAI-compatible model as a pipeline stage: blocking batched `generate`; a request
    that fails every retry (or is refused) comes back empty with finish_reason "error" and
    the reason in `failure`."""

    def __init__(self, config: APIConfig):
        self.name = PREFIX + config.model
        self.config = config

    def generate(self, requests: Sequence[Messages], max_new_tokens: int, temperature: float,
                 stop: Sequence[str], seed: int, progress: str | None = None) -> list[Completion]:
        from tqdm.auto import tqdm

        replies: dict[int, Completion] = {}
        started = time.perf_counter()
        with tqdm(total=len(requests), desc=progress, disable=progress is None, unit="req") as bar:
            def keep(index: int, completion: Completion) -> None:
                replies[index] = completion
                bar.update()

            client = OpenAITeacher(self.config)
            # a seed per row, as a local batch samples each row apart: self-consistency's K copies of
            # one prompt must not come back identical from a server that honours `seed`
            client.run([(m, seed + i) for i, m in enumerate(requests)], max_new_tokens, temperature, stop,
                       Budget(self.config), keep)
        why = client.failure or client.refusal or "the request was not sent"
        # each row's share of the call's wall time, as for local batches: a request's own latency
        # includes its wait behind the others in flight and would grow with --concurrency
        share = (time.perf_counter() - started) / max(1, len(requests))
        return [replace(replies[i], seconds=share) if i in replies else Completion("", 0, 0, "error", 0.0, failure=why)
                for i in range(len(requests))]

    def flops(self, tokens: int) -> float:
        return 0.0  # unknown for a remote model: its cost is counted in USD


def echo_logprobs(config: APIConfig, texts: Sequence[str]) -> list[dict[str, Any]]:
    """Each text's own per-token log-probs from a server: POST /completions with `echo`,
    `logprobs` (the top-k) and one generated token, the legacy OpenAI route that vLLM and
    llama-cpp-python serve with the prompt's log-probs (llama.cpp's own server: its
    /completion with `n_probs`; OpenAI's hosted models no longer echo). Returns each reply's
    `logprobs` object: tokens, text_offset, token_logprobs, top_logprobs. Retries as the chat
    client does; a text that fails every retry stops the run (the trainer resumes from its
    last checkpoint), since a step cannot learn from a teacher that did not answer."""
    return asyncio.run(_echo_logprobs(config, texts))


async def _echo_logprobs(config: APIConfig, texts: Sequence[str]) -> list[dict[str, Any]]:
    import aiohttp

    from cotdistill.errors import EnvironmentProblem

    url = (config.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/") + "/completions"
    headers = {"Authorization": f"Bearer {os.environ.get(config.api_key_env) or 'EMPTY'}"}
    gate = asyncio.Semaphore(config.concurrency)

    async def one(session: aiohttp.ClientSession, text: str) -> dict[str, Any]:
        request = {"model": config.model, "prompt": text, "max_tokens": 1, "temperature": 0.0, "echo": True,
                   "logprobs": config.top_logprobs}
        reason = "no attempt"
        async with gate:
            for attempt in range(config.max_retries + 1):
                wait = None
                try:
                    async with session.post(url, json=request) as response:
                        status, raw = response.status, await response.read()
                        retry_after = response.headers.get("retry-after")
                    if status == 200:
                        logprobs = json.loads(raw)["choices"][0]["logprobs"]
                        if not logprobs or "text_offset" not in logprobs:
                            raise CotdistillError(f"{url}: the server returned no echoed log-probs; it needs "
                                                  "/v1/completions with echo and logprobs (vLLM, llama-cpp-python "
                                                  "started with --logits_all true)")
                        return logprobs
                    if status < 500 and status not in (408, 409, 429):
                        raise CotdistillError(f"teacher {config.model} at {url}: HTTP {status}: {_error_message(raw)}")
                    wait = _seconds(retry_after) if status == 429 else None
                    reason = f"HTTP {status}: {_error_message(raw)}"
                except asyncio.TimeoutError:
                    reason = f"no complete reply within {config.timeout:g} s"
                except aiohttp.ClientError as error:
                    reason = f"{type(error).__name__}: {error}"
                except (ValueError, KeyError, IndexError, TypeError) as error:
                    reason = f"a reply that is not a completion ({type(error).__name__})"
                if attempt < config.max_retries:
                    cap = min(config.max_backoff, config.backoff * 2**attempt)
                    await asyncio.sleep(wait if wait is not None else random.uniform(0, cap))
        raise EnvironmentProblem(f"teacher {config.model} at {url}: {reason} (after {config.max_retries + 1} attempts)")

    timeout = aiohttp.ClientTimeout(total=config.timeout)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        return list(await asyncio.gather(*(one(session, t) for t in texts)))
