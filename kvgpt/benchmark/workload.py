"""Serving workloads: seeded requests with ragged prompt and output lengths, identical for every engine measured.

A workload is data, not code: a list of Request(prompt ids, max_new_tokens), drawn from a fixed seed so that
kvgpt's engines and peers (vLLM) serve exactly the same requests. Introduced in notebooks/11_continuous_batching.ipynb.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from numbers import Integral

from ..validation import check_positive_int


@dataclass(frozen=True)
class Request:
    """One request of a workload: prompt token ids and how many tokens to generate (no EOS: exactly that many)."""

    prompt: tuple[int, ...]
    max_new_tokens: int


def _check_length_range(name: str, value) -> tuple[int, int]:
    if (not isinstance(value, tuple) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, Integral) for v in value) or not 1 <= value[0] <= value[1]):
        raise ValueError(f"{name}={value!r}: must be a tuple (low, high) of ints with 1 <= low <= high")
    return int(value[0]), int(value[1])


def ragged_workload(n_requests: int, vocab_size: int, block_size: int, prompt_lengths: tuple[int, int] = (8, 128),
                    output_lengths: tuple[int, int] = (8, 128), seed: int = 0) -> list[Request]:
    """n_requests requests, prompt and output lengths uniform in the given inclusive ranges, ids uniform in 0..V-1.

    A request whose prompt + output would exceed block_size has its output shortened to fit (so every
    engine can serve every request). The same arguments always give the same list.
    Introduced in notebooks/11_continuous_batching.ipynb.
    """
    for name, value in (("n_requests", n_requests), ("vocab_size", vocab_size), ("block_size", block_size)):
        check_positive_int(name, value)
    (p_lo, p_hi), (o_lo, o_hi) = _check_length_range("prompt_lengths", prompt_lengths), _check_length_range("output_lengths", output_lengths)
    if p_hi >= block_size:
        raise ValueError(f"prompt_lengths={prompt_lengths!r}: the longest prompt must leave room for one new token "
                         f"in block_size={block_size}")
    rng = random.Random(seed)
    requests = []
    for _ in range(n_requests):
        n_prompt, n_out = rng.randint(p_lo, p_hi), rng.randint(o_lo, o_hi)
        prompt = tuple(rng.randrange(vocab_size) for _ in range(n_prompt))
        requests.append(Request(prompt, min(n_out, block_size - n_prompt)))
    return requests


# The requests each serving benchmark runs, per model shape (kvgpt.benchmark.suite.build_model names). GPT-2-small
# gets fewer and shorter requests: a step costs ~100x more. "parity" is what peers/vllm/parity.py checks.
SERVE_WORKLOADS = {
    "full": {"shakespeare-char": {"n_requests": 64, "prompt_lengths": (8, 128), "output_lengths": (8, 128)},
             "gpt2-small": {"n_requests": 16, "prompt_lengths": (8, 64), "output_lengths": (8, 64)}},
    "quick": {"shakespeare-char": {"n_requests": 16, "prompt_lengths": (4, 32), "output_lengths": (4, 32)},
              "gpt2-small": {"n_requests": 4, "prompt_lengths": (4, 16), "output_lengths": (4, 16)}},
    "parity": {"shakespeare-char": {"n_requests": 24, "prompt_lengths": (1, 128), "output_lengths": (1, 96)},
               "gpt2-small": {"n_requests": 8, "prompt_lengths": (1, 48), "output_lengths": (1, 24)}},
}


def serve_workload(model_name: str, config, mode: str = "full", seed: int = 0) -> list[Request]:
    """The seeded requests of SERVE_WORKLOADS[mode][model_name] for a model with this config (vocab, context).

    Introduced in notebooks/11_continuous_batching.ipynb.
    """
    if mode not in SERVE_WORKLOADS or model_name not in SERVE_WORKLOADS[mode]:
        raise ValueError(f"mode={mode!r}, model_name={model_name!r}: must be one of "
                         f"{ {m: list(w) for m, w in SERVE_WORKLOADS.items()} }")
    return ragged_workload(vocab_size=config.vocab_size, block_size=config.block_size, seed=seed,
                           **SERVE_WORKLOADS[mode][model_name])
