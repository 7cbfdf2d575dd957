"""What the benchmarks time: an engine turns a prompt into greedy tokens and reports when each phase ended.

An engine is a callable `(prompt_ids (B, T), new_tokens) -> Run`. The kvgpt engines wrap
AutoregressiveGenerator (no cache, dynamic cache, static cache); kvgpt/benchmark/peers.py wraps
transformers' generate the same way. Every engine is timed from the call to its first new token
(prefill, i.e. time to first token) and from there to its last token (decode).
Introduced in notebooks/08_benchmarks.ipynb.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..generation import AutoregressiveGenerator


@dataclass
class Run:
    """One timed generation. tokens (B, N) are the new tokens only; times in milliseconds.

    prefill_ms: call -> first new token. decode_ms: first -> last new token (N - 1 decode steps).
    total_ms: the whole call, including building the returned result. decode_cpu_ms: CPU time of the
    process (all threads) during decode; far below decode_ms * threads means the machine was busy.

    Introduced in notebooks/08_benchmarks.ipynb.
    """

    tokens: torch.Tensor  # (B, N)
    prefill_ms: float
    decode_ms: float
    total_ms: float
    decode_cpu_ms: float = float("nan")


Engine = Callable[[torch.Tensor, int], Run]


class TokenMismatchError(RuntimeError):
    """Engines that must agree (same weights, same prompt, greedy) produced different tokens."""


def kvgpt_engine(model, use_cache: bool = True, cache_kind: str = "static", compile=False) -> Engine:
    """An engine running kvgpt's AutoregressiveGenerator.stream, greedy, timed per token as it arrives.

    use_cache=False is the honest baseline: the whole prefix again every step, LM head on the last
    position only (as nanoGPT does). compile=True or "aot": every decode step compiled (kvgpt/compiled.py;
    the first run of a shape includes compiling). Shapes: prompt_ids (B, T) -> Run.tokens (B, N).

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    generator = AutoregressiveGenerator(model, compile=compile)

    def run(prompt_ids: torch.Tensor, new_tokens: int) -> Run:
        start = time.perf_counter()
        steps, first, first_cpu = [], None, None
        for step in generator.stream(prompt_ids, new_tokens, use_cache=use_cache, cache_kind=cache_kind):
            steps.append(step)  # one list of B ids per step
            if first is None:
                first, first_cpu = time.perf_counter(), time.process_time()
        last, last_cpu = time.perf_counter(), time.process_time()
        tokens = torch.tensor(steps, dtype=torch.long).reshape(len(steps), -1).T  # (N, B) -> (B, N)
        total = _ms(start, time.perf_counter())
        return Run(tokens, _ms(start, first), _ms(first, last), total, _ms(first_cpu, last_cpu))

    return run


def kvgpt_engines(model) -> dict[str, Engine]:
    """kvgpt's three ways to generate, keyed by the names the tables use."""
    return {"kvgpt no cache": kvgpt_engine(model, use_cache=False),
            "kvgpt dynamic": kvgpt_engine(model, cache_kind="dynamic"),
            "kvgpt static": kvgpt_engine(model, cache_kind="static")}


def check_identical(tokens: dict[str, torch.Tensor], context: str = "") -> None:
    """Raise TokenMismatchError unless every engine's (B, N) tokens equal the first engine's.

    The message names both engines, the row, the first differing step and the two tokens.

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    names = list(tokens)
    if not names:
        return
    ref_name, ref = names[0], tokens[names[0]]
    for name in names[1:]:
        other = tokens[name]
        if other.shape != ref.shape:
            raise TokenMismatchError(f"{context}: {name} made tokens of shape {tuple(other.shape)} but "
                                     f"{ref_name} made {tuple(ref.shape)}")
        diff = (other != ref).nonzero()
        if len(diff):
            row, step = diff[0].tolist()
            raise TokenMismatchError(
                f"{context}: {name} and {ref_name} disagree at row {row}, new token {step}: "
                f"{other[row, step].item()} vs {ref[row, step].item()} (same weights and prompt, greedy: "
                "they must be identical)")


def random_prompts(vocab_size: int, batch_size: int, length: int, seed: int = 0) -> torch.Tensor:
    """Reproducible random prompts, one row per sequence: -> (B, T) long."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, length), generator=generator)


def _ms(start: float | None, end: float | None) -> float:
    return float("nan") if start is None or end is None else (end - start) * 1e3
