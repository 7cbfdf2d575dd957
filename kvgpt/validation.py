"""Argument checks shared by every public entry point: one place that says what is allowed.

Each check raises before any state changes, with a message naming the argument, its value and what is
allowed. A wrong *type* raises ArgumentTypeError, which is both a TypeError and a ValueError, so callers that
catch ValueError for bad arguments (the CLI, the widgets) catch both. Checks return the value normalised
(numpy integers -> int, dtype names -> torch.dtype, device strings -> a torch.device known to run).
Introduced in notebooks/01_config.ipynb.
"""

from __future__ import annotations

import os
from numbers import Integral, Real

import torch

SEED_RANGE = (0, 2**64 - 1)  # what torch.Generator.manual_seed takes (as an unsigned 64-bit value)
ID_DTYPES = (torch.int32, torch.int64)  # what nn.Embedding indexes with; int8/uint8/int16 ids would overflow
FP32 = torch.finfo(torch.float32)  # the sampler's math runs in fp32: knobs must stay finite and nonzero there


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. A TypeError, and a ValueError too: "bad argument" handlers catch it."""


def show(value) -> str:
    """A short repr for messages: tensors by shape and dtype, long values cut (a message is one line)."""
    if isinstance(value, torch.Tensor):
        return f"tensor(shape={tuple(value.shape)}, dtype={value.dtype}, device={value.device})"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def fail_type(name: str, value, allowed: str):
    raise ArgumentTypeError(f"{name}={show(value)} ({type(value).__name__}): must be {allowed}")


def fail_value(name: str, value, allowed: str):
    raise ValueError(f"{name}={show(value)}: must be {allowed}")


def is_int(value) -> bool:
    """True for Python and numpy integers; False for bool (True layers is a typo, not a size) and 0-d tensors."""
    if type(value) is int:  # the common case, without the ABC lookup (the engine asks this per token and sequence)
        return True
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_int(name: str, value, low: int | None = None, high: int | None = None, allowed: str = "") -> int:
    """An int (numpy ints too, never bool) in low..high (inclusive, None = unbounded) -> int."""
    if type(value) is int and (low is None or value >= low) and (high is None or value <= high):
        return value  # the common case, on every engine step: no ABC check, no message built
    if not allowed:
        allowed = "an int" + (f" >= {low}" if high is None and low is not None else "")
        if low is not None and high is not None:
            allowed = f"an int in {low}..{high}"
    if not is_int(value):
        fail_type(name, value, allowed)
    if (low is not None and value < low) or (high is not None and value > high):
        fail_value(name, value, allowed)
    return int(value)


def check_positive_int(name: str, value) -> int:
    """An int >= 1 -> int."""
    return check_int(name, value, low=1, allowed="a positive int")


def check_bool(name: str, value) -> bool:
    """Exactly True or False (1, "yes" or a tensor are not flags)."""
    if not isinstance(value, bool):
        fail_type(name, value, "True or False")
    return value


def check_real(name: str, value, ok, allowed: str) -> float:
    """A real number (not bool) for which ok(value) holds -> float. NaN fails every comparison, so refuse it in ok."""
    if isinstance(value, bool) or not isinstance(value, Real):
        fail_type(name, value, allowed)
    if not ok(float(value)):
        fail_value(name, value, allowed)
    return float(value)


def check_seed(name: str, seed) -> int | None:
    """None or an int in 0 .. 2**64 - 1 (torch.Generator's range); numpy ints become int."""
    if is_int(seed) and not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        fail_value(name, seed, "None or an int in 0 .. 2**64 - 1 (what torch.Generator takes)")
    return None if seed is None else check_int(name, seed, *SEED_RANGE)


def check_choice(name: str, value, choices: tuple, why: str = ""):
    """One of `choices` (compared with ==; the type must match too, so 1 is not True); `why` ends the message."""
    if not any(type(value) is type(c) and value == c for c in choices):
        fail_value(name, value, f"one of {choices}" + (f" ({why})" if why else ""))
    return value


def check_tensor(name: str, value, dims: tuple | None = None, dtypes: tuple | None = None,
                 what: str = "") -> torch.Tensor:
    """A torch.Tensor with value.dim() in dims and dtype in dtypes (None = any); `what` describes the shape."""
    shape = what or (f"{' or '.join(f'{d}-D' for d in dims)}" if dims else "a")
    if not isinstance(value, torch.Tensor):
        fail_type(name, value, f"a {shape} torch.Tensor".replace("a a ", "a "))
    if dims is not None and value.dim() not in dims:
        fail_value(name, value, f"a {shape} tensor".replace("a a ", "a "))
    if dtypes is not None and value.dtype not in dtypes:
        raise ArgumentTypeError(f"{name} has dtype {value.dtype}: must be one of {tuple(str(d) for d in dtypes)}")
    return value


def check_token_ids(name: str, ids: torch.Tensor, vocab_size: int, dims: tuple = (2,)) -> torch.Tensor:
    """A tensor of int32/int64 token ids in 0 .. vocab_size - 1 (one aminmax and one host sync).

    Small integer dtypes are refused: an id above 127 cannot survive int8, so such a tensor is already wrong.
    """
    check_tensor(name, ids, dims)
    if ids.dtype not in ID_DTYPES:
        raise ArgumentTypeError(f"{name} has dtype {ids.dtype}: must hold integer token ids of dtype int32 or int64")
    if ids.numel():
        low, high = torch.aminmax(ids)
        if low.item() < 0 or high.item() >= vocab_size:
            bad = ids[(ids < 0) | (ids >= vocab_size)][0].item()
            raise ValueError(f"{name} contains token id {bad}; allowed ids are 0..{vocab_size - 1}")
    return ids


def check_mask(name: str, mask, ids: torch.Tensor) -> torch.Tensor:
    """A 0/1 (or bool) integer tensor of exactly the shape of `ids`, left padding only -> the mask as long.

    Floats are refused (0.5 would silently become 0), and so is a row with no 1 (a row of padding only).
    """
    check_tensor(name, mask, (2,))
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise ArgumentTypeError(f"{name} has dtype {mask.dtype}: must be an integer or bool tensor of 0/1")
    if tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}: must match the token ids' {tuple(ids.shape)}")
    mask = mask.to(device=ids.device, dtype=torch.long)
    if not ((mask == 0) | (mask == 1)).all():
        bad = mask[(mask != 0) & (mask != 1)][0].item()
        raise ValueError(f"{name} contains {bad}: must hold only 0 (padding) and 1 (token)")
    if (mask[:, 1:] < mask[:, :-1]).any():
        raise ValueError(f"{name} must be left padding: zeros may only come before the ones of a row")
    if not mask[:, -1].all():
        row = int((mask[:, -1] == 0).nonzero()[0, 0])
        raise ValueError(f"{name} row {row} is all padding: every row needs at least one token")
    return mask


_RUNS: dict[str, bool] = {}  # devices already proven to run: the check costs a kernel launch once per device


def check_device(name: str, device, allow_meta: bool = False) -> torch.device | None:
    """None, or a device name / torch.device that exists here and runs a kernel -> torch.device.

    A name check is not enough: "meta" parses and allocates but computes nothing, "cuda" parses on a
    CPU-only build; so a tiny tensor is computed on it and read back. allow_meta: for caches, whose
    bytes can be counted on "meta" without allocating (a model refuses to write into one: other device).
    """
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)) or isinstance(device, bool):
        fail_type(name, device, "None, a device name such as 'cpu' or 'cuda', or a torch.device")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"{name}={show(device)}: not a torch device name ({e})") from None
    if dev.type == "meta" and allow_meta:
        return dev
    if dev.type == "meta":
        raise ValueError(f"{name}={show(device)}: the meta device holds shapes but computes nothing; use cpu, cuda...")
    if str(dev) not in _RUNS:
        try:
            ok = (torch.ones(2, device=dev) * 2).sum().item() == 4
        except Exception as e:  # noqa: BLE001 -- torch raises RuntimeError, AssertionError, NotImplementedError...
            raise ValueError(f"{name}={show(device)}: not usable on this machine: "
                             f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
        if not ok:
            raise ValueError(f"{name}={show(device)}: computed a wrong result on a test tensor")
        _RUNS[str(dev)] = True
    return dev


def same_device(wanted: torch.device | None, actual: torch.device) -> bool:
    """True if `actual` is `wanted` (None: any device; "cuda" without an index: any CUDA device)."""
    return wanted is None or (wanted.type == actual.type and wanted.index in (None, actual.index))


def check_dtype(name: str, dtype, floating: bool = True) -> torch.dtype | None:
    """None, a torch.dtype or its name ("float16", "bfloat16", "float32") -> torch.dtype; floating only."""
    if dtype is None:
        return None
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype):
        fail_type(name, dtype, "None, a torch.dtype or a name such as 'float32', 'bfloat16'")
    if floating and not resolved.is_floating_point:
        fail_value(name, dtype, "a floating-point dtype (float32, float16, bfloat16, float64)")
    return resolved


def check_instance(name: str, value, cls, allowed: str):
    """An instance of `cls` (a class or a tuple of classes), refused by name rather than as a later AttributeError."""
    if not isinstance(value, cls):
        fail_type(name, value, allowed)
    return value


def check_id_list(name: str, ids, vocab_size: int) -> list:
    """A list of token ids, each an int (numpy ints too, never bool) in 0 .. vocab_size - 1 -> the list."""
    for i in ids:
        if not is_int(i) or not 0 <= i < vocab_size:
            raise ValueError(f"{name} contains {i!r}; allowed token ids are ints in 0..{vocab_size - 1}")
    return ids


def available_bytes(device) -> int | None:
    """Bytes a new allocation on `device` can take now (None = the CPU): the kernel's MemAvailable on Linux (else
    physical memory), CUDA's free memory; None when unknown (meta holds no bytes, other backends do not say)."""
    dev = torch.device("cpu") if device is None else torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    if dev.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None


def check_allocation(what: str, nbytes: int, device) -> None:
    """Raise ValueError, before allocating, when `what` (the arguments that size it, named) would need more bytes
    than `device` has available: a clear refusal instead of a MemoryError, an overflow or the OOM killer."""
    free = available_bytes(device)
    if free is not None and nbytes > free:
        raise ValueError(f"{what}: would need {nbytes:,} bytes ({nbytes / 2**30:.3g} GiB) but "
                         f"{'the CPU' if device is None else device} has {free:,} bytes ({free / 2**30:.3g} GiB) available")


def check_path(name: str, value) -> str:
    """A non-empty str or os.PathLike -> str. "" would mean the current directory: never what was meant."""
    if not isinstance(value, (str, os.PathLike)):
        fail_type(name, value, "a model name or a directory path (str or os.PathLike)")
    text = os.fspath(value)
    if not isinstance(text, str) or not text.strip():
        fail_value(name, value, "a non-empty model name or directory path")
    return text


def check_kv_append(k_new, v_new, stored: torch.Tensor | None, length: int, capacity: int | None) -> int:
    """T of a valid KV-cache append: k_new and v_new one floating (B, H, T, D) shape, dtype and device, matching
    the (B, H, ·, D), dtype and device of what is `stored`, with length + T within capacity (None: unbounded)."""
    for name, t in (("k_new", k_new), ("v_new", v_new)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.dtype.is_floating_point:
            fail_type(name, t, "a floating (B, H, T, D) tensor")
    if (k_new.shape, k_new.dtype, k_new.device) != (v_new.shape, v_new.dtype, v_new.device):
        raise ValueError(f"v_new {tuple(v_new.shape)} {v_new.dtype} {v_new.device} differs from "
                         f"k_new {tuple(k_new.shape)} {k_new.dtype} {k_new.device}: they are written together")
    b, h, t, d = k_new.shape
    if stored is not None and ((b, h, d) != (stored.size(0), stored.size(1), stored.size(3))
                               or (k_new.dtype, k_new.device) != (stored.dtype, stored.device)):
        raise ValueError(f"k_new {tuple(k_new.shape)} {k_new.dtype} {k_new.device} does not fit a cache of "
                         f"(B, H, ·, D) = {(stored.size(0), stored.size(1), stored.size(3))} {stored.dtype} {stored.device}")
    if capacity is not None and length + t > capacity:
        raise ValueError(f"KV cache overflow: writing positions {length}..{length + t - 1} "
                         f"but capacity={capacity} (positions 0..{capacity - 1})")
    return t


def check_draw(generators, active, batch_size: int) -> None:
    """Before any generator advances: one CPU torch.Generator per row (None: the sampler's own), `active` None
    or one bool per row."""
    if generators is not None:
        if not isinstance(generators, (list, tuple)) or not all(isinstance(g, torch.Generator) for g in generators):
            fail_type("generators", generators, "a list of torch.Generator, one per row")
        if len(generators) != batch_size:
            raise ValueError(f"generators: got {len(generators)} for a batch of {batch_size} rows; need one per row")
        if any(g.device.type != "cpu" for g in generators):
            raise ValueError("generators must be CPU torch.Generators (rows are drawn on the CPU)")
    if active is not None and (not isinstance(active, (list, tuple)) or len(active) != batch_size
                               or not all(isinstance(a, bool) for a in active)):
        raise ValueError(f"active={show(active)}: must be None or a list of {batch_size} bools, one per row")
