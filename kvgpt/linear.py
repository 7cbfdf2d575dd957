"""The matrix-vector products of a decode step, on MKL (torch's default) or oneDNN with prepacked weights.

A batch-1 decode step is ~50 matrix-vector products streaming every weight once (notebooks/08: the bandwidth
floor). torch's fp32 `F.linear` calls MKL, whose kernels are chosen by CPU vendor: on Intel CPUs its sgemv
splits the rows over every thread; on other CPUs (AMD) MKL takes its generic code path, whose sgemv runs on
one thread while the other OpenMP threads wait, and whose sgemm at batch 8 is ~4x slower still. The same
path can be forced on Intel with MKL_CBWR=COMPATIBLE, which is how it is measured here. oneDNN (also inside
torch) JIT-compiles its kernels for the CPU it finds, whatever the vendor, and parallelises them over threads.
`set_linear_backend(model, "onednn")` reorders every weight once into oneDNN's blocked layout (a second copy:
+1x the linear weights' bytes) and keeps the originals for state_dict, training and everything else.
Introduced in notebooks/08b_engines_and_kernels.ipynb.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .validation import check_choice, check_positive_int

LINEAR_BACKENDS = ("auto", "mkl", "onednn")
SMALL_MODEL_BYTES = 16 * 2**20  # below: one thread decodes faster, and MKL beats oneDNN (measured; see below)


def onednn_available() -> bool:
    """True when this torch has oneDNN's packed linear (CPU builds with mkldnn, torch >= 2.0)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def cpu_vendor() -> str:
    """The CPU's vendor_id from /proc/cpuinfo ("GenuineIntel", "AuthenticAMD", ...), "" where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return ""  # not Linux: no evidence either way


def mkl_generic_path() -> bool:
    """True when MKL runs its vendor-neutral kernels here: a non-Intel CPU, or MKL_CBWR=COMPATIBLE forced."""
    if os.environ.get("MKL_CBWR", "").upper().startswith("COMPATIBLE"):
        return True
    return cpu_vendor() not in ("", "GenuineIntel")


def resolve_backend(backend: str, weight_bytes: int | None = None) -> str:
    """"auto" -> "onednn" where MKL would take its generic path and oneDNN exists, else "mkl".

    weight_bytes: the model's linear weights; under SMALL_MODEL_BYTES "auto" keeps MKL even on its generic path,
    because on matrices that small oneDNN's fixed cost per call outweighs what its kernels save (measured on AMD:
    the embedded model's step is faster on MKL at every batch tried).
    """
    backend = check_choice("backend", backend, LINEAR_BACKENDS)
    if backend == "onednn" and not onednn_available():
        raise ValueError("backend='onednn': this torch build has no oneDNN packed linear "
                         "(torch.backends.mkldnn.is_available() is False); use 'mkl'")
    if backend == "auto":
        small = weight_bytes is not None and weight_bytes < SMALL_MODEL_BYTES
        return "onednn" if mkl_generic_path() and onednn_available() and not small else "mkl"
    return backend


class Linear(nn.Linear):
    """nn.Linear whose inference forward can use a oneDNN-packed copy of its weight.

    Shapes: (..., in) -> (..., out), exactly nn.Linear. The packed copy is used only under no_grad or
    inference_mode for fp32 CPU inputs; it remembers the weight's storage and version counter, so a weight
    replaced or changed in place after packing (.to(), load_state_dict, an optimiser step) is repacked, never
    silently stale.
    Introduced in notebooks/08b_engines_and_kernels.ipynb.
    """

    _packed: torch.Tensor | None = None
    _packed_from: tuple = ()  # (data_ptr, version) of the weight it was packed from
    _batch_hint: int = 1

    def pack(self, batch_hint: int = 1) -> None:
        """Reorder the weight for oneDNN, tuned for calls of about `batch_hint` rows."""
        self._batch_hint = check_positive_int("batch_hint", batch_hint)
        with torch.no_grad():
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach().contiguous(), batch_hint)
        self._packed_from = self._source()

    def unpack(self) -> None:
        self._packed, self._packed_from = None, ()

    def _source(self) -> tuple:
        return self.weight.data_ptr(), self.weight._version  # new storage (.to()) or an in-place write

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None or not self._packable(x):
            return F.linear(x, self.weight, self.bias)
        if self._source() != self._packed_from:  # replaced or changed in place since packing
            self.pack(self._batch_hint)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")

    def _packable(self, x: torch.Tensor) -> bool:
        grad = torch.is_grad_enabled() and (self.weight.requires_grad or x.requires_grad)
        return not grad and x.dtype == self.weight.dtype == torch.float32 and x.device.type == "cpu"


def set_linear_backend(model: nn.Module, backend: str = "auto", batch_hint: int = 1) -> str:
    """Run every kvgpt Linear of `model` (the LM head included) on "mkl" or "onednn"; "auto" picks (resolve_backend,
    from the CPU and the size of the weights). -> the backend.

    batch_hint: the rows per call the packed layout is tuned for (1 for single-stream decode; 8 or more for
    batched decode: measured in notebooks/08). Validated before any layer changes.
    Introduced in notebooks/08b_engines_and_kernels.ipynb.
    """
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    weights = sum(m.weight.nelement() * m.weight.element_size() for m in layers)
    chosen, batch_hint = resolve_backend(backend, weights), check_positive_int("batch_hint", batch_hint)
    if chosen == "onednn" and any(m.weight.dtype != torch.float32 or m.weight.device.type != "cpu" for m in layers):
        raise ValueError("backend='onednn' packs fp32 CPU weights; this model has other dtypes or devices")
    for m in layers:
        m.pack(batch_hint) if chosen == "onednn" else m.unpack()
    model.linear_backend = chosen
    return chosen


def recommended_threads(model: nn.Module, available: int | None = None) -> int:
    """Threads for decoding `model` on this CPU: 1 for a model under 16 MiB of weights, else every core.

    Measured (figures/peers_results.csv, notebooks/08): the embedded 3.3 MB model decodes faster on one thread
    than on two, eager and compiled alike (a step of ~100 tiny ops: waking a second thread costs more than it
    saves); GPT-2-small (497 MB) is ~1.4x faster on two (its step streams weights: two cores read faster).
    Only those two sizes were measured; 16 MiB (weights well inside the L2 + L3 of a core) is where the rule
    switches, not a measured crossover. Introduced in notebooks/08b_engines_and_kernels.ipynb.
    """
    cores = available if available is not None else (os.cpu_count() or 1)
    weights = sum(p.nelement() * p.element_size() for p in model.parameters())  # a tied weight is listed once
    return 1 if weights < SMALL_MODEL_BYTES else max(int(cores), 1)
