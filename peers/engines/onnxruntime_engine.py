"""ONNX Runtime peer: kvgpt's own model exported with torch.onnx, its KV cache as graph inputs and outputs.

    PYTHONPATH=$PWD .venv-peers/bin/python peers/engines/onnxruntime_engine.py [--quick]

The exported graph is `KVGraph` below: kvgpt's own forward (MiniGPTInferenceModel._run) over a cache view whose
layers concatenate to a past given as graph inputs: input_ids (B, T), past_key and past_value (L, B, H, P, D) ->
logits (B, V) of the last position, present_key and present_value (L, B, H, P + T, D), the growing concat cache
of ORT's decoder examples. B and P are dynamic axes. TWO graphs by default: the prefill graph (T dynamic, causal
mask, run once with P = 0) and a decode-step graph (T = 1, no mask ops); graphs=1 runs the prefill graph for every
step too (one graph serves both; a little slower on the char model, where per-op overhead is the cost).
Each run binds the previous run's present_* OrtValues as past_* (IOBinding), so the cache never goes through
numpy; greedy = numpy argmax (first maximum, as torch's) of the (B, V) logits.
Batch > 1 works (every row has the same prompt length here, as in the benchmarks: no padding mask).
Session: CPU EP, ORT_ENABLE_ALL, intra_op_num_threads=threads, inter_op 1, ORT_SEQUENTIAL.

Options measured (peers/engines/sweep_options.py; decode ms/token, median, 1 thread, busy 2-vCPU Intel Xeon
(Sapphire Rapids), so indicative only; every variant's tokens equal kvgpt static's):
  char B=1 (N=64):  1 graph torchscript 0.876 | 2 graphs torchscript 0.857 | no spinning 0.837 | dynamo 0.687 |
                    dynamo + gpt2 optimizer 0.655 | torchscript + gpt2 optimizer 0.694 (kvgpt static 1.72)
  char B=8:         torchscript 2.56 | dynamo 2.55 | dynamo + gpt2 opt 2.44 | torchscript + gpt2 opt 2.50 (kvgpt 3.46)
  GPT-2-small B=8 (N=32): 1 graph 128 | 2 graphs torchscript 122 | dynamo 121 | dynamo + gpt2 opt 128 (kvgpt 178)
  GPT-2-small B=1: torchscript 74.4 | dynamo + gpt2 opt 73.7 | torchscript + gpt2 opt 75.4 (kvgpt 76.9)
  feeding the cache: run() with numpy 0.489, IOBinding 0.498, run_with_ort_values 0.617 (char B=1); IOBinding
  keeps the (L, B, H, S, D) cache inside ORT, which numpy feeds copy out every step (28 MB at GPT-2 B=8, S=48).
The dynamo exporter is the default (fastest or tied; a graph built from torch.export; 4x slower to export);
the TorchScript exporter (dynamo=False) gives the same tokens. The gpt2 optimizer (onnxruntime.transformers, fuses
SkipLayerNormalization / FastGelu where its patterns match kvgpt's graph) stays exact and is kept.
Spinning (ORT's default, kept) busy-waits the pool between ops and slows a torch run that follows in the same
process: char B=1, 2 threads: ORT 0.643 spinning / 0.759 not; kvgpt static alone 0.757, interleaved after spinning
ORT 1.666, after non-spinning ORT 1.173. Use spinning=False when kvgpt is timed beside it in one process.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kvgpt.attention import causal_mask
from kvgpt.benchmark.engines import Engine, Run, _ms
from kvgpt.kv_cache import KVCache

NAME = "onnxruntime"
OPSET = 18  # LayerNormalization is a single op from opset 17 on; 18 is what both exporters emit cleanly
# The session options this module settled on (see the report / README for the others measured)
SETTINGS = {"exporter": "dynamo", "optimizer": "gpt2", "spinning": True, "graphs": 2}


def available() -> str | None:
    """None when onnxruntime and onnx import here, else the ImportError text."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return None


def versions() -> dict:
    """Versions that decide tokens and speed, and the CPU."""
    from kvgpt.benchmark.report import cpu_name, package_versions

    out = package_versions("onnxruntime", "onnx", "torch", "kvgpt")
    return {**out, "cpu": cpu_name(), "settings": dict(SETTINGS)}


class PastView:
    """The exported graph's CacheView: the past comes in as (L, B, H, P, D) tensors, each layer concatenates its
    new keys/values to it (the growing cache of ORT's decoder examples). `length` is 0 and positions come from P
    (a dynamic axis), so the trace holds no Python int that changes between runs (as kvgpt/compiled.py's view)."""

    length = 0

    def __init__(self, past_key, past_value, step: bool):
        self.past, self.step = past_key.size(3), step  # P
        self.layers = [PastLayer(k, v) for k, v in zip(past_key.unbind(0), past_value.unbind(0))]

    def get(self, layer_idx):
        return self.layers[layer_idx]

    def check_call(self, model, b, t):
        """Nothing to check inside the graph: the engine feeds what the graph was exported for."""

    def context_end(self, t):
        return self.past + t

    def position_ids(self, t, device=None):
        return torch.arange(self.past, self.past + t, device=device)  # (T,): new tokens go after the past

    def attention_mask(self, t, device=None):
        return None if self.step else causal_mask(t, self.past + t, device)  # (T, S); a step sees every key


class PastLayer(KVCache):
    """One layer of a PastView: append = concatenate to the past given as a graph input (KVCache.attend attends)."""

    def __init__(self, past_key, past_value):
        self.k, self.v = past_key, past_value  # (B, H, P, D)

    def append(self, k_new, v_new):
        self.k, self.v = torch.cat([self.k, k_new], dim=2), torch.cat([self.v, v_new], dim=2)  # (B, H, S, D)
        return self.k, self.v


class KVGraph(nn.Module):
    """kvgpt's decoder as one cached-step function, for export: the model's own forward (`_run`) over a PastView.

    Shapes: input_ids (B, T), past_key / past_value (L, B, H, P, D) -> logits (B, V) (last position),
    present_key / present_value (L, B, H, P + T, D). P = 0 is the prefill.
    """

    def __init__(self, model, step: bool = False):
        super().__init__()
        self.model, self.step = model, step  # step: a decode-step graph (T = 1, no mask ops at all)

    def forward(self, input_ids, past_key, past_value):
        view = PastView(past_key, past_value, self.step)
        logits = self.model._run(input_ids, view, 0, last_only=True)  # (B, V)
        keys, values = zip(*((layer.k, layer.v) for layer in view.layers))
        return logits, torch.stack(keys), torch.stack(values)  # (B, V), (L, B, H, S, D) x 2


def export(model, path: Path, dynamo: bool = False, step: bool = False) -> Path:
    """Write KVGraph(model, step) to `path` with torch.onnx.export: dynamic B, P, and T unless `step` (T = 1)."""
    c = model.config
    ids = torch.zeros(2, 1 if step else 3, dtype=torch.long)  # (B, T): sizes > 1 so no axis traces as a constant
    past = torch.zeros(c.n_layers, 2, c.kv_heads, 4, c.head_dim)  # (L, B, H, P, D)
    # two distinct tensors: torch.export reads one object passed twice as one input (values would read keys)
    args = (ids, past, past.clone())
    names = (["input_ids", "past_key", "past_value"], ["logits", "present_key", "present_value"])
    graph = KVGraph(model, step).eval()
    new = {} if step else {1: "new"}
    with torch.no_grad():
        if dynamo:
            b, t, p = (torch.export.Dim(n) for n in ("batch", "new", "past"))
            cache = {1: b, 3: p}
            torch.onnx.export(graph, args, str(path), input_names=names[0], output_names=names[1],
                              dynamic_shapes={"input_ids": {0: b} if step else {0: b, 1: t}, "past_key": cache,
                                              "past_value": cache},
                              opset_version=OPSET, dynamo=True, external_data=False, verbose=False)
        else:
            cache = {1: "batch", 3: "past"}
            present = {1: "batch", 3: "total"}
            torch.onnx.export(graph, args, str(path), input_names=names[0], output_names=names[1],
                              dynamic_axes={"input_ids": {0: "batch", **new}, "past_key": cache,
                                            "past_value": cache, "logits": {0: "batch"},
                                            "present_key": present, "present_value": present},
                              opset_version=OPSET, dynamo=False)
    return path


def optimize(path: Path, model, out: Path) -> Path:
    """onnxruntime.transformers' GPT-2 fusions (LayerNorm, Gelu, attention where its patterns match)."""
    from onnxruntime.transformers.optimizer import optimize_model

    c = model.config
    optimized = optimize_model(str(path), model_type="gpt2", num_heads=c.n_heads, hidden_size=c.d_model,
                               opt_level=0)
    optimized.save_model_to_file(str(out))
    return out


def session(path: Path, threads: int, spinning: bool = True):
    """A CPU-EP InferenceSession: all graph optimisations, `threads` intra-op, one inter-op, sequential."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # spinning: idle pool threads busy-wait for the next op (lower latency per op, CPU burnt between calls)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def build(model, workdir: Path, threads: int, **options) -> Engine:
    """Export `model` under workdir and return an Engine running it in ONNX Runtime at `threads`.

    options override SETTINGS: exporter "torchscript" | "dynamo", optimizer None | "gpt2", spinning bool,
    graphs 1 (one graph for prefill and steps) | 2 (the same prefill graph plus a T = 1 step graph).
    """
    unknown = set(options) - set(SETTINGS)
    if unknown:
        raise ValueError(f"options {sorted(unknown)}: allowed are {sorted(SETTINGS)}")
    o = {**SETTINGS, **options}
    workdir.mkdir(parents=True, exist_ok=True)
    sessions = []
    for step in (False, True)[:o["graphs"]]:
        path = export(model, workdir / f"kvgpt{'-step' if step else ''}.onnx", o["exporter"] == "dynamo", step)
        if o["optimizer"] == "gpt2":
            path = optimize(path, model, path.with_suffix(".opt.onnx"))
        sessions.append(session(path, threads, o["spinning"]))
    return ort_engine(sessions[0], model.config, sessions[-1])


def ort_engine(sess, config, step_sess=None) -> Engine:
    """An Engine over KVGraph sessions: `sess` runs the prefill (empty cache), `step_sess` (default: sess) each step.

    IOBinding: ORT allocates each run's outputs and the present_* OrtValues are bound as the next run's past_*,
    so the cache is never copied through numpy (run() with numpy feeds copies it out every step).
    """
    import onnxruntime as ort

    step_sess = step_sess or sess
    shape = (config.n_layers, 0, config.kv_heads, 0, config.head_dim)  # (L, B, H, P=0, D)

    def run(prompt_ids: torch.Tensor, new_tokens: int) -> Run:
        b = prompt_ids.size(0)
        empty = ort.OrtValue.ortvalue_from_numpy(np.zeros((shape[0], b, *shape[2:]), dtype=np.float32))
        bindings = {id(s): s.io_binding() for s in (sess, step_sess)}
        start = time.perf_counter()
        ids, key, value, current = np.ascontiguousarray(prompt_ids.numpy()), empty, empty, sess
        steps, first, first_cpu = [], None, None
        for _ in range(new_tokens):
            io = bindings[id(current)]
            io.bind_cpu_input("input_ids", ids)
            io.bind_ortvalue_input("past_key", key)
            io.bind_ortvalue_input("past_value", value)
            for name in ("logits", "present_key", "present_value"):
                io.bind_output(name, "cpu")  # ORT allocates: the cache grows by one slot per run
            current.run_with_iobinding(io)
            logits, key, value = io.get_outputs()
            io.clear_binding_outputs()
            step = logits.numpy().argmax(-1)  # (B,): greedy, the first maximum on ties as torch's argmax
            steps.append(step)
            if first is None:
                first, first_cpu = time.perf_counter(), time.process_time()
            ids, current = step.reshape(b, 1), step_sess
        last, last_cpu = time.perf_counter(), time.process_time()
        tokens = torch.from_numpy(np.stack(steps, axis=1))  # (B, N)
        return Run(tokens, _ms(start, first), _ms(first, last), _ms(start, time.perf_counter()),
                   _ms(first_cpu, last_cpu))

    return run


if __name__ == "__main__":
    import sys

    import _harness

    sys.exit(_harness.main(sys.modules[__name__]))
