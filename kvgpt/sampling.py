"""Turning logits into the next token: repetition penalty -> temperature -> top-k -> top-p -> softmax -> sample.

Every step is a pure function `(logits, knob) -> new logits` that never edits its input and keeps
shape and dtype (the Sampler casts to fp32 first, so its math never runs in fp16/bf16). Filtered
entries become -inf; no step ever leaves a row without a finite entry. Introduced in notebooks/06_sampling.ipynb.
"""

from __future__ import annotations

import math
from numbers import Integral

import torch

from .validation import (FP32, ArgumentTypeError, check_draw, check_int, check_real, check_seed, check_tensor,
                         fail_type, is_int)

_NEG_INF = float("-inf")


def _check_shape(logits: torch.Tensor) -> None:
    check_tensor("logits", logits, (1, 2), what="(V,) or (B, V)")
    if not logits.dtype.is_floating_point:
        raise ArgumentTypeError(f"logits has dtype {logits.dtype}: must be a floating-point tensor")
    if logits.dim() not in (1, 2) or logits.size(-1) == 0:
        raise ValueError(f"logits must be (V,) or (B, V) with V >= 1, got shape {tuple(logits.shape)}")


def check_logits(logits: torch.Tensor, row_max: torch.Tensor | None = None) -> None:
    """Raise ValueError if a row holds NaN or +inf, or has no finite entry (-inf alone is fine: masked).

    Shapes: logits (V,) or (B, V); row_max: logits.amax(-1) if the caller has it already (greedy does).
    A row's max propagates NaN and is ±inf exactly in the bad cases, and so is the sum of the row maxima:
    one host sync per call (only a sum that overflowed looks further).
    Introduced in notebooks/06_sampling.ipynb.
    """
    _check_shape(logits)
    row_max = logits.amax(dim=-1) if row_max is None else row_max
    if not (math.isfinite(row_max.sum().item()) or torch.isfinite(row_max).all()):
        what = "NaN" if logits.isnan().any() else "+inf" if logits.isposinf().any() else "a row that is all -inf"
        raise ValueError(f"logits contain {what}; sampling needs finite logits (-inf only for masked tokens)")


_KNOBS = {  # name: (is it allowed?, what is allowed); NaN fails every comparison, so it is refused too.
    # The math runs in fp32: a knob must stay finite and nonzero there (1e-50 would become 0, 1e300 inf)
    "temperature": (lambda v: v == 0 or FP32.tiny <= v <= FP32.max,
                    f"0 (greedy) or a number in [{FP32.tiny:.4g}, {FP32.max:.4g}] (finite and nonzero in fp32)"),
    "top_p": (lambda v: 0 < v <= 1, "None or a number in (0, 1]"),
    "repetition_penalty": (lambda v: FP32.tiny <= v <= FP32.max,
                           f"a number in [{FP32.tiny:.4g}, {FP32.max:.4g}] (1 = off, > 1 discourages repeats)"),
}


def check_knob(name: str, value):
    """Validate one knob (top_k: None or an int >= 0, None/0 = off; others as in _KNOBS) and normalise it.

    Introduced in notebooks/06_sampling.ipynb.
    """
    if name == "top_k":
        if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or value < 0):
            raise ValueError(f"top_k={value!r}: must be None or an int >= 0 (None or 0 = off)")
        return None if value is None or value == 0 else int(value)
    if name == "top_p" and value is None:
        return None
    ok, allowed = _KNOBS[name]
    return check_real(name, value, ok, allowed)


def seen_mask(history, vocab_size: int, batch_size: int = 1) -> torch.Tensor:
    """Tokens each row has seen: ids (S,), (B, S) or id lists (negative = padding, ignored) or a bool mask -> (B, V).

    Introduced in notebooks/06_sampling.ipynb.
    """
    if isinstance(history, torch.Tensor) and history.dtype == torch.bool:
        if history.dim() not in (1, 2) or history.shape[-1] != vocab_size or history.numel() != batch_size * vocab_size:
            raise ValueError(f"history mask has shape {tuple(history.shape)}; need (B={batch_size}, V={vocab_size})")
        return history.reshape(batch_size, vocab_size)
    if isinstance(history, torch.Tensor):
        if history.dim() not in (1, 2) or history.dtype.is_floating_point or history.dtype.is_complex:
            raise ArgumentTypeError(f"history {tuple(history.shape)} {history.dtype}: must be (S,) or (B, S) int "
                                    "ids or a (B, V) bool mask")
        rows = [history.tolist()] if history.dim() == 1 else history.tolist()
    elif not isinstance(history, (list, tuple)):
        fail_type("history", history, "None, a list of ids, a list of id lists, or a tensor")
    elif all(is_int(i) for i in history):
        rows = [list(history)]
    elif all(isinstance(r, (list, tuple)) for r in history):
        rows = [list(r) for r in history]
    else:
        fail_type("history", history, "a list of int ids or a list of such lists, one per row")
    if len(rows) != batch_size:
        raise ValueError(f"history has {len(rows)} rows but the logits have batch {batch_size}")
    mask = torch.zeros(batch_size, vocab_size, dtype=torch.bool)
    for b, row in enumerate(rows):
        if not all(is_int(i) for i in row):
            raise ArgumentTypeError(f"history row {b} contains {next(i for i in row if not is_int(i))!r}; "
                                    "token ids must be ints (negative = padding)")
        ids = [i for i in row if i >= 0]  # negative = padding: never counted as seen
        if any(i >= vocab_size for i in ids):
            raise ValueError(f"history row {b} has token id {max(ids)}; allowed ids are 0..{vocab_size - 1}")
        mask[b, ids] = True
    return mask


def apply_repetition_penalty(logits: torch.Tensor, history, penalty: float) -> torch.Tensor:
    """Seen tokens: positive logits divided by `penalty`, negative ones multiplied (CTRL, as transformers).

    Shapes: logits (V,) or (B, V); history as in seen_mask: pass the prompt too; each token counts once.
    Introduced in notebooks/06_sampling.ipynb.
    """
    penalty = check_knob("repetition_penalty", penalty)
    check_logits(logits)
    return _penalize(logits, history, penalty)


def _penalize(logits, history, penalty):
    if history is None:
        return logits
    rows = logits if logits.dim() == 2 else logits[None]  # (B, V)
    seen = seen_mask(history, rows.size(-1), rows.size(0))  # (B, V); checked even when the penalty is off
    if penalty == 1.0:
        return logits
    seen = seen.to(logits.device)
    top = torch.finfo(rows.dtype).max  # an extreme penalty saturates at the dtype's range instead of reaching inf
    penalized = torch.where(rows < 0, rows * penalty, rows / penalty).clamp(-top, top)
    out = torch.where(seen & (rows > _NEG_INF), penalized, rows)  # a masked (-inf) token stays masked
    return out if logits.dim() == 2 else out[0]


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature; temperature 0 is the limit: only the argmax survives (no division by 0).

    Shapes: (V,) or (B, V) -> same. Introduced in notebooks/06_sampling.ipynb.
    """
    temperature = check_knob("temperature", temperature)
    check_logits(logits)
    return _temperature(logits, temperature)


def _temperature(logits, temperature):
    if temperature == 0:
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.argmax(-1, keepdim=True), True)
        return logits.masked_fill(~keep, _NEG_INF)
    if temperature >= 1.0:  # |logits| only shrinks: nothing can overflow
        return logits if temperature == 1.0 else logits / temperature
    x = logits / temperature
    # a row where a finite logit overflowed to ±inf gets (logits - row max) / t instead: the same softmax,
    # every entry <= 0, so overflow can only reach -inf (probability 0) and the maximum stays finite
    overflow = (x.isinf() & (logits > _NEG_INF)).any(-1, keepdim=True)  # (B, 1)
    return torch.where(overflow, (logits - logits.amax(-1, keepdim=True)) / temperature, x)


def apply_top_k(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep exactly the k largest logits per row; ties at the k-th value go to the lowest token id.

    So top_k=1 is always the argmax (greedy), even with ties. k None/0 or k >= V: unchanged.
    Shapes: (V,) or (B, V) -> same. Introduced in notebooks/06_sampling.ipynb.
    """
    k = check_knob("top_k", k)
    check_logits(logits)
    return _top_k(logits, k)


def _top_k(logits, k):
    if k is None or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1): the k-th largest value
    above, tied = logits > kth, logits == kth  # (B, V)
    room = k - above.sum(-1, keepdim=True)  # how many of the tied may still enter
    keep = above | (tied & (tied.cumsum(-1) <= room))  # cumsum counts ties from the lowest id up
    return logits.masked_fill(~keep, _NEG_INF)


def apply_top_p(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus: keep the most likely tokens until their probability reaches p, the crossing token included.

    Probabilities in fp32; the top token is always kept, so no row is emptied. p None or 1: unchanged.
    Shapes: (V,) or (B, V) -> same. Introduced in notebooks/06_sampling.ipynb.
    """
    p = check_knob("top_p", p)
    check_logits(logits)
    return _top_p(logits, p)


def _top_p(logits, p):
    if p is None or p == 1.0:
        return logits
    sorted_logits, order = torch.sort(logits.float(), dim=-1, descending=True, stable=True)  # (B, V)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    before = torch.cat([torch.zeros_like(cum[..., :1]), cum[..., :-1]], dim=-1)  # mass of the tokens ahead
    drop_sorted = before >= p  # the set already reached p without this token
    drop_sorted[..., 0] = False  # the top token always stays: p below fp32's smallest value compares as 0
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, _NEG_INF)


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The argmax token of each row (the first one on ties). (V,) -> () or (B, V) -> (B,) long.

    Introduced in notebooks/05_decoding.ipynb.
    """
    _check_shape(logits)  # before max() meets an empty row
    best, ids = logits.max(dim=-1)  # each row's maximum and its first index
    check_logits(logits, row_max=best)
    return ids


def row_generators(seed: int | None, batch_size: int) -> list[torch.Generator]:
    """One CPU torch.Generator per row, each seeded with `seed` (None: a fresh random seed per row).

    Every row draws only from its own generator, so row b of a batch samples exactly what its prompt
    would sample alone with the same seed, whatever the other rows hold (two equal prompts in one batch
    therefore draw equal tokens). The global RNG is never used.
    Introduced in notebooks/06_sampling.ipynb.
    """
    seed, batch_size = check_seed("seed", seed), check_int("batch_size", batch_size, 1)
    gens = [torch.Generator(device="cpu") for _ in range(batch_size)]
    for g in gens:
        g.manual_seed(seed) if seed is not None else g.seed()
    return gens


def sample_from_probs(probs: torch.Tensor, generators: list[torch.Generator], active=None) -> torch.Tensor:
    """Draw one token per row from its own generator (on CPU, so results do not depend on the device).

    Shapes: probs (B, V) -> (B,) long on probs' device; rows with active[b] False are not drawn (id 0).
    Introduced in notebooks/06_sampling.ipynb.
    """
    check_draw(generators, active, probs.size(0))
    cpu = probs.cpu()
    out = torch.zeros(probs.size(0), dtype=torch.long)
    for b, g in enumerate(generators):
        if active is None or active[b]:
            out[b] = torch.multinomial(cpu[b : b + 1], 1, generator=g)[0, 0]  # same call alone or in a batch
    return out.to(probs.device)




class Sampler:
    """Logits -> next token ids: repetition penalty -> temperature -> top-k -> top-p -> softmax -> sample.

    temperature 0 is greedy (after the repetition penalty). The math runs in fp32 whatever the logits'
    dtype. The seed makes runs reproducible; see row_generators for the per-row scheme.
    Shapes: logits (B, V) -> ids (B,); (V,) -> ().

    Introduced in notebooks/06_sampling.ipynb.
    """

    def __init__(self, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 repetition_penalty: float = 1.0, seed: int | None = None):
        given = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "repetition_penalty": repetition_penalty}
        self.knobs = {name: check_knob(name, value) for name, value in given.items()}
        self.seed = check_seed("seed", seed)  # 0 .. 2**64 - 1, what torch.Generator takes
        self._own: list[torch.Generator] = []  # used when sample() is called without generators

    @property
    def is_greedy(self) -> bool:
        """True when sampling reduces to the argmax (temperature 0 or top_k 1)."""
        return self.knobs["temperature"] == 0 or self.knobs["top_k"] == 1

    # the single steps under the spec's names, each defaulting to this sampler's knob
    def greedy(self, logits):
        return greedy(logits)

    def temperature(self, logits, temp=None):
        return apply_temperature(logits, self.knobs["temperature"] if temp is None else temp)

    def top_k(self, logits, k=None):
        return apply_top_k(logits, self.knobs["top_k"] if k is None else k)

    def top_p(self, logits, p=None):
        return apply_top_p(logits, self.knobs["top_p"] if p is None else p)

    def process(self, logits: torch.Tensor, history=None) -> torch.Tensor:
        """The whole filter pipeline in fp32: -> processed logits, same shape, -inf where filtered."""
        check_logits(logits)
        x = _penalize(logits.float(), history, self.knobs["repetition_penalty"])
        x = _temperature(x, self.knobs["temperature"])
        return _top_p(_top_k(x, self.knobs["top_k"]), self.knobs["top_p"])

    def probs(self, logits: torch.Tensor, history=None) -> torch.Tensor:
        """The final distribution the next token is drawn from (fp32, zeros where filtered)."""
        return self.process(logits, history).softmax(dim=-1)

    def generators(self, batch_size: int) -> list[torch.Generator]:
        """Fresh per-row generators from this sampler's seed (each generate() call takes new ones)."""
        return row_generators(self.seed, batch_size)

    def sample(self, logits: torch.Tensor, history=None, generators=None, active=None) -> torch.Tensor:
        """Next token per row: (B, V) -> (B,), (V,) -> (). history: seen ids or a (B, V) mask (None: no penalty).

        Without `generators` (one per row), the sampler's own per-row stream carries on between calls.
        """
        x = self.process(logits, history)
        rows = x if x.dim() == 2 else x[None]  # (B, V)
        check_draw(generators, active, rows.size(0))  # before any generator is made or advanced
        if self.is_greedy:  # one finite entry per row is left: no draw, no generator advanced
            ids = rows.argmax(-1)
        else:
            if generators is None:
                if len(self._own) != rows.size(0):
                    self._own = self.generators(rows.size(0))
                generators = self._own
            ids = sample_from_probs(rows.softmax(-1), generators, active)
        return ids if x.dim() == 2 else ids[0]

    def __repr__(self) -> str:
        knobs = ", ".join(f"{k}={v!r}" for k, v in self.knobs.items())
        return f"Sampler({knobs}, seed={self.seed!r})"
