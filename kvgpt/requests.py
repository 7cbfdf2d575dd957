"""One request check and one row sampler, shared by every door into the engine.

AutoregressiveGenerator (05), LLMEngine (10) and SpeculativeGenerator (13) take the same things from a caller —
prompt(s), how many new tokens, how to pick them, when to stop — so they check them here, once, with the same
messages; and they pick each row's next token the same way (RowSampler), so a request gets the same tokens
whichever door it came through. Introduced in notebooks/05_decoding.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batching import prompt_rows
from .sampling import Sampler, greedy, seen_mask
from .validation import check_id_list, check_instance, check_int


@dataclass(frozen=True)
class CheckedRequest:
    """A checked request: rows of token ids, the new-token budget, the sampler (None: greedy), stop ids, pad id.

    Introduced in notebooks/05_decoding.ipynb.
    """

    rows: list  # list[list[int]], each row non-empty, ids in 0 .. V - 1
    batched: bool  # the caller gave a batch (a list of prompts or a (B, T) tensor), not one prompt
    max_new_tokens: int
    sampler: Sampler | None
    eos: tuple  # stop ids (empty: never stop early)
    pad_id: int  # fed to finished rows and used as left padding (never seen by attention)


def check_request(prompt, max_new_tokens, sampler, eos_token_id, vocab_size: int, pad_token_id=None,
                  min_new_tokens: int = 0, name: str = "prompt") -> CheckedRequest:
    """Check everything a caller hands a generator -> CheckedRequest; raises ValueError/TypeError naming the argument.

    prompt: one prompt (a list of ids or a (T,) tensor) or a batch of them (a list of lists or a (B, T) tensor).
    eos_token_id: None, an int or a list of ints. pad_token_id defaults to the first EOS id, else 0. `name` is what
    a refused prompt is called in the message (e.g. "prompts[3]" for the fourth of a list).
    Introduced in notebooks/05_decoding.ipynb.
    """
    rows, batched = prompt_rows(prompt, vocab_size, name)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, min_new_tokens)  # numpy ints would wrap in sums
    check_instance("sampler", sampler, (Sampler, type(None)), "None (greedy) or a kvgpt.Sampler")
    eos = [] if eos_token_id is None else list(eos_token_id) if isinstance(eos_token_id, (list, tuple)) \
        else [eos_token_id]
    check_id_list("eos_token_id", eos, vocab_size)
    pad = pad_token_id if pad_token_id is not None else eos[0] if eos else 0
    check_id_list("pad_token_id", [pad], vocab_size)
    return CheckedRequest(rows, batched, max_new_tokens, sampler, tuple(int(e) for e in eos), int(pad))


class RowSampler:
    """Each row's next token: the argmax, or the sampler drawing from the row's OWN generator, with the tokens the
    row has seen (prompt included, pads never) for the repetition penalty; finished rows get the pad, no draw.

    Shapes: history (B, T) ids with -1 for padding (or a list of id lists); pick: logits (B, V) -> ids (B,).
    `finish(ids)` marks rows whose token is an EOS and returns them. A batch of one is what LLMEngine keeps per
    request, so a request samples the same tokens in the engine as generated alone.
    Introduced in notebooks/05_decoding.ipynb.
    """

    def __init__(self, sampler: Sampler | None, history, vocab_size: int, batch_size: int, pad_id: int = 0,
                 eos: tuple = ()) -> None:
        self.sampler, self.pad_id, self.batch_size = sampler, pad_id, batch_size
        self.generators = sampler.generators(batch_size) if sampler is not None and not sampler.is_greedy else None
        penalized = sampler is not None and sampler.knobs["repetition_penalty"] != 1.0
        self.seen = seen_mask(history, vocab_size, batch_size) if penalized else None  # (B, V) or None
        self.eos = torch.tensor(eos) if eos else None  # (E,)
        self.active = [True] * batch_size
        self.done: torch.Tensor | None = None  # (B,) bool once a row has finished, else None

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of every row: (B, V) -> (B,) long; a finished row gets the pad token."""
        if self.seen is not None and self.seen.device != logits.device:
            self.seen = self.seen.to(logits.device)  # once: the mask lives beside the logits it penalizes
        if self.sampler is None:
            ids = greedy(logits)
        else:
            ids = self.sampler.sample(logits, self.seen, self.generators, self.active)
        if self.done is not None:  # finished rows: their logits are ignored, they are fed the pad token
            ids = ids.masked_fill(self.done.to(ids.device), self.pad_id)
        if self.seen is not None:
            self.seen.scatter_(1, ids[:, None], True)
        return ids

    def finish(self, ids: torch.Tensor) -> list[int]:
        """Rows whose new token is an EOS (they stop now). One host sync per step, only when EOS ids are set."""
        if self.eos is None:
            return []
        hit = torch.isin(ids.cpu(), self.eos).tolist()
        newly = [r for r, (a, h) in enumerate(zip(self.active, hit)) if a and h]
        for r in newly:
            self.active[r] = False
        if newly:
            self.done = torch.tensor([not a for a in self.active])  # (B,)
        return newly

    @property
    def all_finished(self) -> bool:
        return not any(self.active)
