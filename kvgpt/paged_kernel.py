"""The C++ paged-attention operator: built once at first use, cached on disk, with a pure-PyTorch fallback.

kvgpt/csrc/paged_attention.cpp is compiled by torch.utils.cpp_extension (it needs a C++ compiler and ninja) into a
library that registers torch.ops.kvgpt.paged_attention with torch.library. The build lands in torch's extension
folder (TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions) under a name that hashes the source, the flags
and the CPU, so an edited source or another machine builds afresh and a second run loads in milliseconds. If no
flag set builds (no compiler, macOS without Xcode's tools...), paged attention runs the blockwise PyTorch loop
instead, after ONE warning; kernel_in_use() says which one runs, kernel_error() why.
Introduced in notebooks/14_attention_kernels.ipynb.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "paged_attention.cpp"
# Reductions may be reordered (-fassociative-math needs the two flags after it) so the compiler vectorises the dot
# products; infinities and NaN keep their meaning (no -ffast-math: the online softmax starts from -inf).
PORTABLE_FLAGS = ["-O3", "-fno-math-errno", "-fassociative-math", "-fno-trapping-math", "-fno-signed-zeros"]
_STATE: dict = {"tried": False, "op": None, "error": None}


def build_flag_sets() -> list[list[str]]:
    """The compiler flags to try, best first.

    at::parallel_for is OpenMP inside an inline header on Linux builds of torch: without -fopenmp the operator
    would run on one thread. macOS' clang has no OpenMP, so there it runs on one thread. -march=native uses
    every vector instruction of this CPU (the build is cached per CPU name, so another CPU rebuilds).
    """
    base = PORTABLE_FLAGS + ([] if sys.platform == "darwin" else ["-fopenmp"])
    native = base + ["-march=native"] if platform.machine().lower() in ("x86_64", "amd64") else None
    return [f for f in (native, base, PORTABLE_FLAGS) if f is not None]


def _registered():
    """torch.ops.kvgpt.paged_attention (its one overload) if this process already loaded it, else None."""
    try:
        return torch.ops.kvgpt.paged_attention.default
    except (AttributeError, RuntimeError):
        return None


def _cpu_features() -> str:
    """What -march=native compiles for: the CPU's feature flags (Linux), else the processor's name."""
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):  # x86, ARM
                return line
    return platform.processor() + platform.machine()


def _build(flags: list[str]):
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # pip's ninja puts its binary beside the package, not always on PATH
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass
    key = "\n".join([SOURCE.read_text(), " ".join(flags), _cpu_features(), torch.__version__, sys.version])
    name = "kvgpt_paged_" + hashlib.sha256(key.encode()).hexdigest()[:12]
    cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=flags, is_python_module=False, verbose=False)
    return _registered()


def load_paged_kernel():
    """The compiled operator (building it on the first call of the process), or None if it cannot be built.

    Introduced in notebooks/14_attention_kernels.ipynb.
    """
    if _STATE["tried"]:
        return _STATE["op"]
    _STATE["tried"] = True
    op, errors = _registered(), []
    for flags in build_flag_sets() if op is None else []:
        try:
            op = _build(flags)
            break
        except Exception as e:  # noqa: BLE001 -- compiler missing, ninja missing, a flag refused: try the next set
            errors.append(f"{' '.join(flags)}: {type(e).__name__}: {' '.join(str(e).split())[-300:]}")
    _STATE["op"], _STATE["error"] = op, None if op is not None else "\n".join(errors)
    if op is None:
        warnings.warn("kvgpt: the C++ paged-attention kernel could not be built (kvgpt.paged_kernel.kernel_error() "
                      "says why); paged attention runs the blockwise PyTorch loop instead: same results, slower.",
                      RuntimeWarning, stacklevel=2)
    return op


def kernel_in_use() -> str:
    """Which paged-attention kernel impl="auto" runs on the CPU: "cpp" or "blockwise" (the fallback).

    Introduced in notebooks/14_attention_kernels.ipynb.
    """
    return "cpp" if load_paged_kernel() is not None else "blockwise"


def kernel_error() -> str | None:
    """Why the C++ kernel could not be built (each flag set tried, with the compiler's last words), or None."""
    return _STATE["error"]


def cpp_source(name: str) -> str:
    """The text of one top-level definition of kvgpt/csrc/paged_attention.cpp (its comment and template lines
    included), found by name: what the chapter shows, read from the file that is compiled.

    Introduced in notebooks/14_attention_kernels.ipynb.
    """
    lines = SOURCE.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if not line.startswith((" ", "}", "#")) and f"{name}(" in line
              or line.startswith(f"{name}(")]
    if not starts:
        raise ValueError(f"name={name!r}: no top-level definition of that name in {SOURCE.name}")
    first = last = starts[0]
    while first > 0 and (lines[first - 1].startswith(("//", "template")) and lines[first - 1].strip()):
        first -= 1
    while last < len(lines) and not lines[last].startswith("}"):
        last += 1
    return "\n".join(lines[first:last + 1]) + "\n"
