"""The peer: transformers' GPT2LMHeadModel.generate on weights exported from kvgpt (kvgpt.hf.to_hf).

Same prompt, greedy, no EOS (every engine makes exactly N tokens), timed like kvgpt's engines:
a streamer notes the time each new token arrives. Introduced in notebooks/08_benchmarks.ipynb.
"""

from __future__ import annotations

import copy
import time

import torch

from ..hf import to_hf
from .engines import Engine, Run, _ms


def hf_model(model):
    """transformers' GPT2LMHeadModel with exactly `model`'s weights, set up for fixed-length greedy runs."""
    hf = to_hf(model)
    config = copy.deepcopy(hf.generation_config)
    config.eos_token_id = None  # GPT-2's <|endoftext|> would stop a row early; kvgpt's runs have no EOS
    config.pad_token_id = 0  # only to silence the "no pad token" warning: no row is ever padded here
    config.do_sample = False
    hf.generation_config = config
    return hf


class _Clock:
    """A transformers streamer that records when generate hands over each chunk (prompt first, then each step)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def end(self) -> None:
        pass


def hf_engine(hf, use_cache: bool = True, cache_implementation: str | None = None) -> Engine:
    """An engine running hf.generate (greedy) under torch.inference_mode.

    cache_implementation None is transformers' default DynamicCache; "static" preallocates.
    Shapes: prompt_ids (B, T) -> Run.tokens (B, N).

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    kwargs = {"use_cache": use_cache}
    if cache_implementation is not None:
        kwargs["cache_implementation"] = cache_implementation

    def run(prompt_ids: torch.Tensor, new_tokens: int) -> Run:
        from transformers.utils import logging

        clock, verbosity = _Clock(), logging.get_verbosity()
        logging.set_verbosity_error()  # generation-config chatter is not a result
        try:
            start = time.perf_counter()
            with torch.inference_mode():
                out = hf.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=new_tokens,
                                  streamer=clock, **kwargs)
            end = time.perf_counter()
        finally:
            logging.set_verbosity(verbosity)
        first, last = (clock.times[1], clock.times[-1]) if len(clock.times) > 1 else (None, None)
        cpu = _ms(clock.cpu[1], clock.cpu[-1]) if len(clock.cpu) > 1 else float("nan")
        return Run(out[:, prompt_ids.size(1):].cpu(), _ms(start, first), _ms(first, last), _ms(start, end), cpu)

    return run


def hf_engines(hf) -> dict[str, Engine]:
    """transformers' three ways, keyed by the names the tables use."""
    return {"hf no cache": hf_engine(hf, use_cache=False),
            "hf dynamic": hf_engine(hf),
            "hf static": hf_engine(hf, cache_implementation="static")}


def hf_forward(hf, prompt_ids: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
    """One cached forward pass (a prefill) -> logits (B, T, V), or (B, K, V) for logits_to_keep=K > 0.

    logits_to_keep=0 is what `hf(ids)` does (every position); generate asks for 1.
    """
    with torch.inference_mode():
        return hf(prompt_ids, use_cache=True, logits_to_keep=logits_to_keep).logits
