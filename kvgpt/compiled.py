"""A decode step compiled as one graph: fixed shapes, the position a tensor, the static cache written in place.

The eager step (MiniGPTInferenceModel.forward_step) pays Python and dispatch per op (about 100 ATen ops per
step): negligible for GPT-2-small, most of the time for a 3 MB model. torch.compile removes that only if the
step has nothing that changes between steps except tensor values: here the cache buffers keep their full
(B, Hkv, capacity, D) shape, the new key and value go in with index_copy_ at a tensor position, and a mask hides
the slots not written yet (gpt-fast's recipe). Nothing inside syncs with the host: the token-id check runs once
per call outside the graph (the generator's own argmax/sampled ids need none). Prefill stays eager (it runs once).
Introduced in notebooks/08b_engines_and_kernels.ipynb.
"""

from __future__ import annotations

import os
import tempfile
import time
import types

import torch
from torch import nn

from .attention import attend
from .batching import padded_attention_mask, padded_position_ids
from .cache_manager import KVCacheManager
from .kv_cache import KVCache, StaticKVCache
from .model import check_model
from .validation import check_choice

CAPACITY_FLOOR = 64  # smallest compiled cache: shorter generations share one graph instead of one each


def graph_capacity(needed: int, block_size: int) -> int:
    """The cache capacity a compiled generation uses: the next power of two >= needed (>= 64), <= block_size.

    Each capacity is one compiled graph, so rounding up keeps their number at log2(block_size / 64) + 1.
    Introduced in notebooks/08b_engines_and_kernels.ipynb.
    """
    capacity = CAPACITY_FLOOR
    while capacity < needed:
        capacity *= 2
    return min(capacity, block_size)


class StaticStepView:
    """A static KVCacheManager seen by one compiled decode step: the model's own CacheView, with the position a tensor.

    Shapes: position (1,) long (the slot every row writes), pad (B,) left padding per row, keys/values L buffers of
    (B, Hkv, capacity, D). Layers write slot `position` in place (index_copy_ at a tensor position) and attend
    over the whole buffer, the slots not written yet and each row's padding masked: nothing in the graph depends
    on a Python int that changes between steps, so one graph serves every position (gpt-fast's recipe).
    `length` is 0 for the same reason: the position lives in the tensor, not in the trace.
    Introduced in notebooks/08b_engines_and_kernels.ipynb.
    """

    length = 0

    def __init__(self, position: torch.Tensor, pad: torch.Tensor, keys: list, values: list) -> None:
        self.position, self.pad, self.capacity = position, pad, keys[0].size(2)
        self.layers = [StaticStepLayer(position, k, v) for k, v in zip(keys, values)]

    def get(self, layer_idx: int) -> "StaticStepLayer":
        return self.layers[layer_idx]

    def check_call(self, model, b: int, t: int) -> None:
        """Nothing to check inside the graph: CompiledDecoder.step checked the cache on the host first."""

    def context_end(self, t: int) -> int:
        return self.capacity  # checked on the host before the graph runs

    def position_ids(self, t: int, device=None) -> torch.Tensor:
        return padded_position_ids(self.pad, self.position, t)  # (B, 1): kvgpt/batching.py's ragged math

    def attention_mask(self, t: int, device=None) -> torch.Tensor:
        return padded_attention_mask(self.pad, self.position, t, self.capacity)  # (B, 1, 1, capacity)


class StaticStepLayer(KVCache):
    """One layer of a StaticStepView: the new key/value go to slot `position` of the full-capacity buffers."""

    def __init__(self, position: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor) -> None:
        self.position, self.k_buf, self.v_buf = position, k_buf, v_buf

    def attend(self, q, k_new, v_new, mask, impl="sdpa"):
        self.k_buf.index_copy_(2, self.position, k_new)  # in place, at a tensor position: one graph for every step
        self.v_buf.index_copy_(2, self.position, v_new)
        return attend(q, self.k_buf, self.v_buf, mask, impl)  # (B, H, 1, D) over all capacity slots, masked


def compiled_step(model, next_ids, position, pad, keys, values):
    """One decode step as pure tensor code: the model's own forward (`_run`) over a StaticStepView.

    Shapes: next_ids (B, 1), position (1,) long, pad (B,), keys/values L buffers (B, Hkv, capacity, D) -> (B, V).
    Introduced in notebooks/08b_engines_and_kernels.ipynb.
    """
    return model._run(next_ids, StaticStepView(position, pad, keys, values), 0, last_only=True)


BACKENDS = ("inductor", "eager", "aot")


class _Step(nn.Module):
    """compiled_step as a module, the form torch.export takes (the model's weights become its constants)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, next_ids, position, pad, keys, values):
        return compiled_step(self.model, next_ids, position, pad, keys, values)


class CompiledDecoder:
    """model.forward_step for a static KV cache, compiled once per (batch, capacity, dtype) and reused.

    Shapes: next_ids (B,) or (B, 1), a static KVCacheManager of batch B -> logits (B, V), equal to
    forward_step's up to float rounding (softmax over more, masked, slots). compile_s holds each
    shape's compile time (its first call). backend: "inductor" (torch.compile; mode passed on), "eager"
    (dynamo's trace run eagerly: checks the single graph, no C++ build), or "aot" (torch.export +
    AOTInductor, torch >= 2.6: the step becomes one C++ function with no Python guards or wrapper per call;
    it holds a copy of the weights, so a change to them after compiling recompiles before the next step;
    a parameter *replaced* by a new object is not seen: build a new CompiledDecoder then).

    Introduced in notebooks/08b_engines_and_kernels.ipynb.
    """

    def __init__(self, model, backend: str = "inductor", mode: str | None = None):
        check_model("model", model)
        self.model, self.backend, self.mode = model, check_choice("backend", backend, BACKENDS), mode
        if backend == "aot" and not hasattr(torch._inductor, "aoti_compile_and_package"):
            raise ValueError(f"backend='aot' needs torch >= 2.6 (AOTInductor packages); this is {torch.__version__}")
        self._dir = tempfile.TemporaryDirectory(prefix="kvgpt-aot-") if backend == "aot" else None
        self._weights = None  # what the AOT graphs were compiled from: (data_ptr, version) of every parameter
        self._params = list(model.parameters())
        self._graphs: dict[tuple, object] = {}  # one compiled function per shape, so dynamo's per-function
        self.compile_s: dict[tuple, float] = {}  # recompile limit (8) never decides which shapes are compiled
        self._pads: dict[tuple, torch.Tensor] = {}  # (B,) zeros per batch size: no padding, no allocation per step

    def __call__(self, next_ids: torch.Tensor, position: int, cache: KVCacheManager) -> torch.Tensor:
        """Checked like forward_step (ids, position, cache), then the compiled step."""
        next_ids = self.model._check_step(next_ids, position, cache)  # forward_step's checks and messages
        return self.step(next_ids, cache)

    def trusted_step(self, next_ids: torch.Tensor, position: int, cache: KVCacheManager) -> torch.Tensor:
        """forward_step's signature without the id check, for ids the generator chose itself (an argmax or a
        draw: always in 0 .. V - 1). position must be cache.length, as the generator passes it."""
        return self.step(next_ids, cache)

    def step(self, next_ids: torch.Tensor, cache: KVCacheManager) -> torch.Tensor:
        """The step without the id check: writes slot cache.length. next_ids (B,) or (B, 1) -> logits (B, V)."""
        self._check_cache(cache)  # host-side compares only: index_copy_ past the buffer must never reach the graph
        layers = cache.layer_caches
        b, capacity = cache.batch_size, cache.capacity
        if cache.length >= capacity:
            raise ValueError(f"KV cache overflow: writing position {cache.length} but capacity={capacity}")
        position = torch.full((1,), cache.length, dtype=torch.long, device=next_ids.device)  # (1,)
        pad = cache.pad_lengths if cache.pad_lengths is not None else self._no_pad(b, next_ids.device)
        key = (b, capacity, layers[0]._k.dtype, str(next_ids.device))
        args = (next_ids.reshape(b, 1), position, pad, [c._k for c in layers], [c._v for c in layers])
        if self._dir is not None and self._weights != self._weight_state():  # copies of older weights: drop
            self._graphs.clear()
        start = time.perf_counter()
        graph = self._graphs.get(key) or self._compile(key, args)
        logits = graph(self.model, *args)
        if key not in self.compile_s:
            self.compile_s[key] = time.perf_counter() - start
        for c in layers:  # the host-side lengths follow the slot the graph wrote
            c.length += 1
        return logits

    def _compile(self, key: tuple, args: tuple):
        if self.backend == "aot":
            graph = self._compile_aot(args)
        else:  # a copy of compiled_step's code object: dynamo keeps its compiled graphs per code object
            fresh = types.FunctionType(compiled_step.__code__.replace(), compiled_step.__globals__, "compiled_step")
            graph = torch.compile(fresh, backend=self.backend, mode=self.mode, fullgraph=True, dynamic=False)
        self._graphs[key] = graph
        return graph

    def _compile_aot(self, args: tuple):
        """torch.export the step for these shapes, build it with AOTInductor, load it -> graph(model, *args)."""
        from torch._inductor import aoti_compile_and_package, aoti_load_package

        with torch.inference_mode(False):  # export traces with ordinary tensors (clones of the real inputs)
            example = tuple(t.clone() for t in args[:3]) + tuple([t.clone() for t in ts] for ts in args[3:])
            program = torch.export.export(_Step(self.model), example)
            path = os.path.join(self._dir.name, f"step-{len(os.listdir(self._dir.name))}.pt2")
            runner = aoti_load_package(aoti_compile_and_package(program, package_path=path))
        self._weights = self._weight_state()
        boxed = getattr(getattr(runner, "loader", None), "boxed_run", None)
        if boxed is None:  # another torch: the public call (it re-reads the input spec every call)
            return lambda model, ids, position, pad, keys, values: runner(ids, position, pad, keys, values)
        # the flat form the package's __call__ builds, without re-parsing its JSON input spec every step
        return lambda model, ids, position, pad, keys, values: boxed([ids, position, pad, *keys, *values])[0]

    def _weight_state(self) -> list:
        # the parameter objects are listed once (model.parameters() walks every module: ~0.3 ms a step); an
        # in-place change, load_state_dict or .to() moves a data_ptr or version counter and is seen here
        return [(p.data_ptr(), p._version) for p in self._params]

    def _check_cache(self, cache) -> None:
        if not isinstance(cache, KVCacheManager) or not all(isinstance(c, StaticKVCache) and c._k is not None
                                                            for c in cache.layer_caches):
            raise ValueError(f"cache={cache!r}: the compiled step needs a KVCacheManager of kind 'static' whose "
                             "buffers exist (prefill it first); dynamic and int8 caches change shape or "
                             "format every step")

    def _no_pad(self, b: int, device) -> torch.Tensor:
        pad = self._pads.get((b, str(device)))
        if pad is None:
            pad = self._pads[(b, str(device))] = torch.zeros(b, dtype=torch.long, device=device)
        return pad
