"""The OpenAI completions API without the web: a JSON body -> a checked request; tokens -> the JSON chunks sent back.

parse_completion() refuses a bad body with a RequestError naming the field (HTTP 400, OpenAI's error shape)
before anything reaches the engine (kvgpt/serving/responses.py builds what goes back). Field names and
defaults follow OpenAI's /v1/completions as vLLM serves it.
Introduced in notebooks/15_serving.ipynb.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from ..sampling import Sampler, check_knob
from ..validation import check_bool, check_id_list, check_int, check_seed, fail_type

# Fields that change nothing at these values (what clients such as `vllm bench serve` send); others are refused
NEUTRAL = {"n": (1,), "best_of": (None, 1), "echo": (False,), "logprobs": (None,), "suffix": (None,),
           "logit_bias": (None, {}), "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
           "min_p": (None, 0, 0.0), "min_tokens": (None, 0), "user": None}
KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop",
         "stop_token_ids", "ignore_eos", "stream", "stream_options", *NEUTRAL}
DEFAULTS = {"max_tokens": 16, "temperature": 1.0}  # OpenAI's documented defaults for /v1/completions


class RequestError(ValueError):
    """A refused request: HTTP status, OpenAI error type and the offending field (param) for the JSON error body.

    Introduced in notebooks/15_serving.ipynb.
    """

    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "BadRequestError"):
        super().__init__(message)
        self.param, self.status, self.kind = param, status, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.status}}


@dataclass
class CompletionRequest:
    """A checked /v1/completions request: prompt ids and everything LLMEngine.add_request takes.

    Introduced in notebooks/15_serving.ipynb.
    """

    model: str
    prompt: list[int]
    max_tokens: int
    sampler: Sampler | None  # None: greedy
    eos: list[int]
    stop: list[str]
    stream: bool = False
    include_usage: bool = False
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))


def _field(name: str, check, *args):
    """check(*args), any refusal re-raised as a RequestError naming the field."""
    try:
        return check(*args)
    except ValueError as e:  # ArgumentTypeError (a wrong type) is a ValueError too
        raise RequestError(str(e), name) from None


def parse_body(raw: bytes) -> dict:
    """The request body as a JSON object, else RequestError (param None: the body itself is wrong)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


@dataclass(frozen=True)
class Served:
    """What a request is checked against: the served name, the tokenizer, and the engine's fixed limits.

    Introduced in notebooks/15_serving.ipynb.
    """

    name: str
    tokenizer: object
    vocab_size: int
    context: int  # the model's block_size: prompt + max_tokens must fit
    num_blocks: int  # the engine's KV pool ...
    block_size: int  # ... of blocks this many slots long

    def never_fits(self, prompt_len: int, max_tokens: int) -> str | None:
        """Why the pool can never hold such a request (LLMEngine refuses it too), or None."""
        blocks = -(-(prompt_len + max_tokens - 1) // self.block_size)  # the last token is never fed back
        if blocks <= self.num_blocks:
            return None
        return (f"{prompt_len} prompt tokens + max_tokens need {blocks} KV blocks of {self.block_size} slots but the "
                f"server's pool has {self.num_blocks} (--num-blocks): no preemption could ever make room")


def parse_completion(body: dict, served: Served) -> CompletionRequest:
    """A JSON object -> CompletionRequest, or RequestError naming the first bad field (nothing is queued).

    Introduced in notebooks/15_serving.ipynb.
    """
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise RequestError(f"unrecognized field {unknown[0]!r}; kvgpt accepts {sorted(KNOWN)}", unknown[0])
    for name, neutral in NEUTRAL.items():
        if neutral is not None and name in body and not any(type(body[name]) is type(v) and body[name] == v
                                                             for v in neutral):
            raise RequestError(f"{name}={body[name]!r}: kvgpt serves only {name} in {neutral}", name)
    model = body.get("model", served.name)
    if model != served.name:
        raise RequestError(f"model={model!r}: this server serves only {served.name!r} (GET /v1/models)", "model")
    prompt = _prompt(body.get("prompt"), served)
    max_tokens = _field("max_tokens", check_int, "max_tokens", _get(body, "max_tokens"), 1)
    if len(prompt) + max_tokens > served.context:
        raise RequestError(f"max_tokens={max_tokens}: the prompt's {len(prompt)} tokens + max_tokens exceed the "
                           f"model's context of {served.context} tokens",
                           "prompt" if len(prompt) >= served.context else "max_tokens")
    why = served.never_fits(len(prompt), max_tokens)
    if why:
        raise RequestError(f"max_tokens={max_tokens}: {why}", "max_tokens")
    sampler = _sampler(body)
    eos = _eos(body, served)
    options = {} if body.get("stream_options") is None else body["stream_options"]
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise RequestError(f"stream_options={options!r}: must be null or {{\"include_usage\": true/false}}",
                           "stream_options")
    stream = _field("stream", check_bool, "stream", body.get("stream") or False)
    usage = _field("stream_options", check_bool, "include_usage", options.get("include_usage") or False)
    return CompletionRequest(model, prompt, max_tokens, sampler, eos, _stop(body.get("stop")), stream, usage)


def _get(body: dict, name: str):
    return DEFAULTS[name] if body.get(name) is None else body[name]


def _eos(body: dict, served: Served) -> list[int]:
    """The tokenizer's end-of-text id (unless ignore_eos) + vLLM's stop_token_ids: a request ends after any of them."""
    ignore = _field("ignore_eos", check_bool, "ignore_eos", body.get("ignore_eos") or False)
    eos = served.tokenizer.eos_token_id
    eos = [] if ignore or eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
    extra = [] if body.get("stop_token_ids") is None else body["stop_token_ids"]
    if not isinstance(extra, list):
        _field("stop_token_ids", fail_type, "stop_token_ids", extra, "a list of token ids")
    _field("stop_token_ids", check_id_list, "stop_token_ids", extra, served.vocab_size)
    return eos + extra


def _prompt(prompt, served: Served) -> list[int]:
    """A str, a list of ids, or a one-element list of either -> ids (one prompt per request: n=1)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        raise RequestError(f"prompt: {len(prompt)} prompts in one request; kvgpt takes one per request", "prompt")
    if isinstance(prompt, str):
        ids = _field("prompt", served.tokenizer.encode, prompt)
    elif isinstance(prompt, list):
        ids = prompt
        _field("prompt", check_id_list, "prompt", ids, served.vocab_size)
    else:
        _field("prompt", fail_type, "prompt", prompt, "a string or a list of token ids")
    if not ids:
        raise RequestError("prompt is empty: a completion needs at least one prompt token", "prompt")
    return list(ids)


def _sampler(body: dict) -> Sampler | None:
    """OpenAI's knobs -> a kvgpt Sampler; None (plain greedy) for temperature 0 without a repetition penalty."""
    top_k = body.get("top_k")
    knobs = {"temperature": _get(body, "temperature"), "top_p": body.get("top_p"),
             "top_k": None if top_k == -1 else top_k,  # vLLM's -1 (and 0) mean "off"
             "repetition_penalty": 1.0 if body.get("repetition_penalty") is None else body["repetition_penalty"]}
    knobs = {name: _field(name, check_knob, name, value) for name, value in knobs.items()}
    seed = _field("seed", check_seed, "seed", body.get("seed"))
    if knobs["temperature"] == 0 and knobs["repetition_penalty"] == 1.0:
        return None
    return Sampler(**knobs, seed=seed)


def _stop(stop) -> list[str]:
    """None, a string, or a list of up to 4 non-empty strings (OpenAI's limit)."""
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(f"stop={stop!r}: must be null, a non-empty string or a list of up to 4", "stop")
    return stops
