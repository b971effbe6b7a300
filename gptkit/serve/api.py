"""What `gptkit serve` accepts and answers, in OpenAI's shapes.

/v1/completions takes OpenAI's parameters (model, prompt, max_tokens, temperature, top_p, stop, seed,
stream; n, best_of, echo, logprobs, suffix and the penalties only at their neutral values) plus top_k.
A parameter it does not know is a 400 naming it, never silently ignored. Defaults are OpenAI's
(max_tokens 16, temperature 1, top_p 1); top_k off.

Limits: the prompt must fit the model's context (a 400 otherwise, not a silent cut); prompt plus
max_tokens may go past it, and then the window restarts as in `gptkit sample` (gptkit.generate);
max_tokens is capped by the server's --max-tokens.

/v1/chat/completions is a 400: a GPT-2-style base model has no chat format, and inventing one would
answer chat requests with text the model was never trained to produce.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from gptkit.errors import GptkitError
from gptkit.serve.engine import Completion

COMPLETION_DEFAULTS: dict[str, Any] = {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0}
# OpenAI parameters accepted only at the value that changes nothing
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1, None),
    "best_of": (1, None),
    "echo": (False, None),
    "logprobs": (None,),
    "suffix": (None,),
    "presence_penalty": (0, 0.0, None),
    "frequency_penalty": (0, 0.0, None),
    "logit_bias": (None, {}),
}
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "stream"}
KNOWN |= {"stream_options", "user", *NEUTRAL}
MAX_STOPS = 4  # as OpenAI's


class ApiError(Exception):
    """An answer other than 200: OpenAI's error body {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> bytes:
        err = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return json.dumps({"error": err}).encode()


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


CHAT_REFUSED = ApiError(
    400,
    "this server has no chat format: the model is a GPT-2-style language model that continues text, "
    "and was not trained on chat turns; send a prompt to /v1/completions instead",
    code="chat_not_supported",
)


def _int(body: dict, name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(f"{name} must be an integer, got {json.dumps(v)}", name)
    if v < low or (high is not None and v > high):
        limit = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise bad(f"{name} must be {limit}, got {v}", name)
    return v


def _float(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    v = body.get(name, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise bad(f"{name} must be a number, got {json.dumps(v)}", name)
    if v < low or v > high or (low_open and v == low):
        raise bad(f"{name} must be in {'(' if low_open else '['}{low}, {high}], got {v}", name)
    return float(v)


def parse_completion(
    body: Any, *, model_id: str, tokenizer, block_size: int, max_tokens_cap: int
) -> tuple[Completion, bool]:
    """A /v1/completions body -> (the request, whether to stream), or an ApiError."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise bad(f"unknown parameter {unknown[0]!r} (this server takes: {', '.join(sorted(KNOWN))})", unknown[0])
    for name, neutral in NEUTRAL.items():
        if name in body and body[name] not in neutral:
            raise bad(f"{name}={json.dumps(body[name])} is not supported (only {json.dumps(neutral[0])})", name)
    model = body.get("model")
    if model != model_id:
        if not isinstance(model, str):
            raise bad("model is required: the name /v1/models lists", "model")
        raise ApiError(
            404, f"the model {model!r} is not served here; this server has {model_id!r}", code="model_not_found"
        )
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise bad("prompt must be a string (or a list of one string)", "prompt")
    if prompt:
        try:
            ids = tokenizer.encode(prompt)
        except GptkitError as e:
            raise bad(f"the prompt cannot be encoded: {e}", "prompt") from None
    elif tokenizer.eot_token is not None:
        ids = [tokenizer.eot_token]  # unconditional, as `gptkit sample` starts without a prompt
    else:
        raise bad(f"empty prompt: the {tokenizer.name} vocabulary has no end-of-text token to start from", "prompt")
    if len(ids) > block_size:
        raise bad(
            f"the prompt is {len(ids)} tokens; this model attends to {block_size}: shorten it",
            "prompt",
            "context_length_exceeded",
        )
    max_tokens = _int(body, "max_tokens", COMPLETION_DEFAULTS["max_tokens"], 1, max_tokens_cap)
    temperature = _float(body, "temperature", COMPLETION_DEFAULTS["temperature"], 0.0, 100.0)
    top_p = _float(body, "top_p", COMPLETION_DEFAULTS["top_p"], 0.0, 1.0, low_open=True)
    top_k = _int(body, "top_k", None, 0)
    seed = _int(body, "seed", None, -(2**63), 2**64 - 1)
    stop = body.get("stop")
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOPS:
        stops = list(stop)
    else:
        raise bad(f"stop must be a string or a list of at most {MAX_STOPS} strings", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool | None):
        raise bad("stream must be true or false", "stream")
    req = Completion(
        prompt=ids,
        prompt_tokens=len(ids),
        max_tokens=int(max_tokens or 0),
        temperature=temperature,
        top_k=top_k or None,  # 0: no limit, as `gptkit sample --top-k 0`
        top_p=top_p if top_p < 1 else None,
        seed=None if seed is None else seed % 2**64,
        stop=stops,
    )
    return req, bool(stream)


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def usage(req: Completion, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": req.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": req.prompt_tokens + completion_tokens,
    }


def completion_body(
    cid: str, model_id: str, text: str, finish_reason: str | None, use: dict[str, int] | None
) -> dict[str, Any]:
    """A whole reply, or one chunk of a streamed one (finish_reason and usage on the last only)."""
    body: dict[str, Any] = {
        "id": cid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}],
    }
    if use is not None:
        body["usage"] = use
    return body


def models_body(model_id: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "gptkit"}]}
