"""The decoding thread of `gptkit serve`.

One thread owns the model. Requests wait in a bounded queue; between two decoding steps every waiting
request that has a free row is prefilled (together, right-padded: gptkit.generate.DecodeBatch), then
one step decodes every active request in one forward. A request joins after at most one step of the
others, and leaves as soon as it is done or its client has gone.

Limits: at most `max_batch` requests decode at once and `max_queue` more wait; past that `submit`
refuses (the HTTP side answers 429), so memory and latency stay bounded.

What a request is sent (TextStream): whole UTF-8 characters only (a byte-level token can hold part of
one), and never a stop string or the start of one: text that could still become a stop string is held
back until the next tokens decide it.
"""

from __future__ import annotations

import collections
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from queue import Queue

import torch

from gptkit.generate import DecodeBatch, StreamDecoder, next_token
from gptkit.model import GPT


@dataclass
class Completion:
    """One request, checked (gptkit.serve.api.parse_completion)."""

    prompt: list[int]
    prompt_tokens: int  # as the client sees it (an empty prompt is the one end-of-text token)
    max_tokens: int
    temperature: float  # 0: greedy
    top_k: int | None
    top_p: float | None
    seed: int | None
    stop: list[str] = field(default_factory=list)


class TextStream:
    """A request's tokens in, the text it may be sent out.

    A stop string can only begin where the text not yet sent begins or later: what was sent never
    ended in the start of one (that part is held back), so searching from there finds every stop.
    """

    def __init__(self, tokenizer, stop: list[str]):
        self.decoder = StreamDecoder(tokenizer)
        self.stop = [s for s in stop if s]
        self.text = ""  # the completion's text so far (cut at a stop string once one is found)
        self.sent = 0  # how much of it has been released
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.text += self.decoder.push([token])
        return self._release(final=False)

    def finish(self) -> str:
        """The end of the completion (end-of-text, max_tokens): what was held back goes too."""
        if self.stopped:
            return ""
        self.text += self.decoder.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[: min(hits)], True
            final = True
        safe = len(self.text)
        if not final:  # hold back the longest tail that could still grow into a stop string
            for s in self.stop:
                for k in range(min(len(s) - 1, safe - self.sent), 0, -1):
                    if self.text.endswith(s[:k]):
                        safe = min(safe, len(self.text) - k)
                        break
        piece, self.sent = self.text[self.sent : safe], max(self.sent, safe)
        return piece


class Busy(Exception):
    """Every row is decoding and the queue is full."""


@dataclass
class Event:
    kind: str  # text | end | error
    text: str = ""
    finish_reason: str | None = None  # stop | length
    completion_tokens: int = 0


class Job:
    """A request inside the engine. The HTTP thread reads `events` and sets `cancelled`."""

    def __init__(self, req: Completion, tokenizer):
        self.req = req
        self.events: Queue[Event] = Queue()
        self.cancelled = threading.Event()
        self.stream = TextStream(tokenizer, req.stop)
        self.tokens = 0
        self.done = False

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    def __init__(
        self,
        model: GPT,
        tokenizer,
        *,
        max_batch: int = 8,
        max_queue: int = 16,
        log: Callable[[str], None] | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.device = model.get_parameter("transformer.wte.weight").device
        self.log = log or (lambda msg: None)
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self.active = 0  # rows decoding (read by /health)
        self.generated = 0  # tokens made since the start, every request together
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="gptkit-decode", daemon=True)

    def start(self) -> Engine:
        self._thread.start()
        return self

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=10)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def submit(self, req: Completion) -> Job:
        job = Job(req, self.tokenizer)
        with self._cond:
            if self.active + len(self._waiting) >= self.max_batch + self.max_queue:
                raise Busy
            self._waiting.append(job)
            self._cond.notify()
        return job

    def _sampler(self, req: Completion):
        generator = None
        if req.temperature > 0:  # seeded as `gptkit sample` seeds it, so a seed gives the same draws
            generator = torch.Generator(device=self.device)
            generator.manual_seed(req.seed if req.seed is not None else torch.seed())
        return partial(
            next_token,
            vocab_size=self.tokenizer.vocab_size,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            generator=generator,
        )

    def _run(self) -> None:
        with torch.inference_mode():
            batch = DecodeBatch(self.model, self.max_batch)
            try:
                while True:
                    with self._cond:
                        while not self._closing and not self._waiting and not len(batch):
                            self._cond.wait()
                        if self._closing:
                            return
                        new: list[Job] = []
                        while self._waiting and len(batch) + len(new) < self.max_batch:
                            job = self._waiting.popleft()
                            if not job.cancelled.is_set():
                                new.append(job)
                        self.active = len(batch) + len(new)
                    try:
                        self._step(batch, new)
                    except Exception:  # a bug: its traceback in the log, its requests told, the server goes on
                        self.log(traceback.format_exc().rstrip())
                        for failed in [*batch.keys, *new]:
                            if isinstance(failed, Job) and not failed.done:
                                failed.done = True
                                failed.events.put(
                                    Event("error", "internal error while decoding (see the server's log)")
                                )
                        batch.close()
                        batch = DecodeBatch(self.model, self.max_batch)
                    with self._cond:
                        self.active = len(batch)
            finally:
                batch.close()

    def _step(self, batch: DecodeBatch, new: list[Job]) -> None:
        for job in list(batch.keys):  # a client that went away frees its row before the next step
            if isinstance(job, Job) and job.cancelled.is_set():
                batch.remove(job)
        if new:
            prompts = [torch.tensor(j.req.prompt, dtype=torch.long, device=self.device) for j in new]
            tokens = batch.add(prompts, [self._sampler(j.req) for j in new], keys=list(new))
            jobs: list[object] = list(new)
        elif len(batch):
            tokens = batch.step()
            jobs = list(batch.keys)
        else:
            return
        for job, token in zip(jobs, tokens.tolist(), strict=True):
            assert isinstance(job, Job)
            self._take(job, token)
            if job.done:
                batch.remove(job)

    def _take(self, job: Job, token: int) -> None:
        """One new token of `job`: its text, and whether it ends there."""
        self.generated += 1
        eot = self.tokenizer.eot_token
        if eot is not None and token == eot:  # not part of the text, nor counted in usage
            self._end(job, "stop")
            return
        job.tokens += 1
        piece = job.stream.push(token)
        if piece:
            job.events.put(Event("text", piece))
        if job.stream.stopped:
            self._end(job, "stop")
        elif job.tokens >= job.req.max_tokens:
            self._end(job, "length")

    def _end(self, job: Job, reason: str) -> None:
        tail = job.stream.finish()
        if tail:
            job.events.put(Event("text", tail))
        job.done = True
        with self._cond:  # its row is free from now on: the client's next request must not see it taken
            self.active -= 1
        job.events.put(Event("end", finish_reason=reason, completion_tokens=job.tokens))
