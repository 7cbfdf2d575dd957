"""The peer: LLMs-from-scratch's KV-cache GPT (PyPI llms-from-scratch==1.0.19) on exactly kvgpt's weights.

Its model is `llms_from_scratch.kv_cache.gpt2.GPTModel` (a per-call KVCache of per-layer (K, V) tensors grown by
torch.cat) and its cached loop is `llms_from_scratch.kv_cache.generate.generate_text_simple_stream` (prefill the
prompt, then one token per step, argmax of the last logits). Both are used as published, through one subclass.

What breaks, and what this module changes (nothing else; their files are neither copied nor edited): in 1.0.19
the cached loops of `kv_cache/generate.py` were written for a model that keeps `model.cfg`, has
`model.reset_kv_cache()` and uses the cache handed to `model(ids, cache=cache)`; `kv_cache/gpt2.py`'s GPTModel
has none of the three, and its attention's causal mask is wrong for any call with fewer queries than keys. Run as
published, in this order (each found by running after fixing the one before):
    AttributeError: 'GPTModel' object has no attribute 'cfg'              (generate_text_simple)
    AttributeError: 'GPTModel' object has no attribute 'reset_kv_cache'   (both loops)
    then it runs but is WRONG, silently: forward(in_idx, use_cache=False, cache=None) defaults use_cache to
    False, so the cache is never read or filled and current_pos never advances; every decode step sees only its
    own token at position 0 (on a random 2-layer model the cached loop repeats one token, the uncached does not)
    then, with the cache used: RuntimeError: output with shape [1, 4, 1, 17] doesn't match the broadcast shape
    [1, 4, 17, 17] at the first decode step: `causal_mask[:, -num_tokens:]` keeps the last T COLUMNS of the
    S x S mask where the last T ROWS (the new queries) are meant; the two agree only when T == S (the prefill).
`CachedGPTModel` below makes the four smallest changes:
  1. `self.cfg = cfg` in __init__ (generate reads cfg["context_length"] and cfg["n_layers"]);
  2. `reset_kv_cache()` sets current_pos = 0 (the only state the model keeps; the KVCache object is per call);
  3. forward's use_cache defaults to `cache is not None`, so passing a cache means using it (an explicit
     use_cache still wins; the uncached parity check calls forward(ids) with no cache, positions from 0);
  4. each block's attention gets the class RowMaskedAttention (a subclass; same module, same parameters) whose
     forward is their computation, step for step, except `causal_mask[-num_tokens:, :]`.
With these the cached tokens equal kvgpt's, and their uncached logits equal kvgpt's to ~1e-5.

The weight map (kvgpt -> theirs): qkv_proj rows [0:C) | [C:2C) | [2C:3C) -> W_query | W_key | W_value (weight and
bias: qkv_bias=True); out_proj -> att.out_proj; ln_1/ln_2 weight, bias -> norm1/norm2 scale, shift; ffn.fc,
ffn.proj -> ff.layers[0], ff.layers[2]; final_layernorm -> final_norm; out_head.weight IS tok_emb.weight (tied, one
Parameter, as kvgpt has it). drop_rate 0, context_length = block_size, eval mode. Their LayerNorm (mean/var by
hand, eps 1e-5) and GELU (tanh form) are GPT-2's; their attention is matmul + masked softmax, kvgpt's SDPA.

Batching: B > 1 works (all rows share one position counter, which is right for equal-length prompts, the only
kind the benchmark sends; no padding). Threads: torch.set_num_threads(threads) for each call, restored after
(inter-op threads are left to the process: torch only sets them once). Shapes: prompt (B, T) -> tokens (B, N).
"""

from __future__ import annotations

import pathlib
import time

import torch

from kvgpt.benchmark.engines import Engine, Run, _ms

NAME = "llms-from-scratch"


def available() -> str | None:
    """None when llms_from_scratch's KV-cache GPT imports here, else the reason."""
    try:
        import llms_from_scratch.kv_cache.generate  # noqa: F401
        import llms_from_scratch.kv_cache.gpt2  # noqa: F401
    except Exception as e:  # ImportError, or their package importing something absent
        return f"llms_from_scratch.kv_cache does not import: {type(e).__name__}: {e}"
    return None


def versions() -> dict:
    from kvgpt.benchmark.report import package_versions

    out = package_versions("llms-from-scratch", "torch", "kvgpt")
    return out


def cached_model_class():
    """GPTModel with the four changes the module docstring lists (built lazily: their package is optional)."""
    from llms_from_scratch.kv_cache.gpt2 import GPTModel

    class CachedGPTModel(GPTModel):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.cfg = cfg  # change 1: generate reads model.cfg
            fixed = fixed_attention_class()
            for block in self.trf_blocks:  # change 4: the attention whose causal mask slices rows
                block.att.__class__ = fixed  # same module and parameters, one method replaced

        def reset_kv_cache(self):
            self.current_pos = 0  # change 2: the position counter is the model's only cache state

        def forward(self, in_idx, use_cache=None, cache=None):
            # change 3: a cache passed in is a cache used (their default use_cache=False ignored it)
            return super().forward(in_idx, use_cache=cache is not None if use_cache is None else use_cache,
                                   cache=cache)

    return CachedGPTModel


def fixed_attention_class():
    """Their MultiHeadAttention; forward is their computation in their order, except the one mask line (change 4)."""
    from llms_from_scratch.kv_cache.gpt2 import MultiHeadAttention

    class RowMaskedAttention(MultiHeadAttention):
        def forward(self, x, use_cache=False, start_pos=0, cache=None):
            b, num_tokens, _ = x.shape  # (B, T, C)
            keys, values, queries = (p(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)
                                     for p in (self.W_key, self.W_value, self.W_query))  # each (B, H, T, D)
            if use_cache:
                if cache is not None:
                    keys, values = torch.cat([cache[0], keys], dim=2), torch.cat([cache[1], values], dim=2)
                next_cache = (keys, values)  # each (B, H, S, D)
            else:
                next_cache = None
            seq_len = keys.size(2)
            causal_mask = torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool, device=x.device), diagonal=1)
            causal_mask = causal_mask[-num_tokens:, :][None, None, :, :]  # THE change: theirs is [:, -num_tokens:]
            attn_scores = queries @ keys.transpose(2, 3)  # (B, H, T, S)
            attn_scores.masked_fill_(causal_mask, -torch.inf)
            attn_weights = self.dropout(torch.softmax(attn_scores / keys.shape[-1]**0.5, dim=-1))
            context_vec = (attn_weights @ values).transpose(1, 2).contiguous().view(b, num_tokens, self.d_out)
            return self.out_proj(context_vec), next_cache

    return RowMaskedAttention


def gpt_config(model) -> dict:
    """Their config dict for a kvgpt model (GPT-2 choices: qkv bias, no dropout)."""
    c = model.config
    if c.kv_heads != c.n_heads:
        raise ValueError(f"model: n_kv_heads={c.n_kv_heads} != n_heads={c.n_heads}; their GPT-2 is multi-head only")
    return {"vocab_size": c.vocab_size, "context_length": c.block_size, "emb_dim": c.d_model, "n_heads": c.n_heads,
            "n_layers": c.n_layers, "drop_rate": 0.0, "qkv_bias": True}


def convert(model):
    """Their CachedGPTModel (fp32, eval) holding exactly `model`'s weights, LM head tied to the embedding."""
    cfg = gpt_config(model)
    with torch.device("meta"):  # no random init of weights about to be replaced (seconds for GPT-2-small)
        theirs = cached_model_class()(cfg)
    ours, c = model.state_dict(), cfg["emb_dim"]
    sd = {"tok_emb.weight": ours["token_embedding.embedding.weight"],
          "pos_emb.weight": ours["position_embedding.pos_embedding.weight"],
          "final_norm.scale": ours["final_layernorm.weight"], "final_norm.shift": ours["final_layernorm.bias"],
          "out_head.weight": ours["token_embedding.embedding.weight"]}
    for i in range(cfg["n_layers"]):
        k, b = f"blocks.{i}.", f"trf_blocks.{i}."
        for p in ("weight", "bias"):
            q, key, v = ours[k + f"attn.qkv_proj.{p}"].split(c, dim=0)  # (3C, C) -> 3 x (C, C); bias (3C,) -> 3 x (C,)
            sd.update({b + f"att.W_query.{p}": q, b + f"att.W_key.{p}": key, b + f"att.W_value.{p}": v,
                       b + f"att.out_proj.{p}": ours[k + f"attn.out_proj.{p}"],
                       b + f"ff.layers.0.{p}": ours[k + f"ffn.fc.{p}"], b + f"ff.layers.2.{p}": ours[k + f"ffn.proj.{p}"]})
        for n, theirs_n in (("ln_1", "norm1"), ("ln_2", "norm2")):
            sd[b + f"{theirs_n}.scale"], sd[b + f"{theirs_n}.shift"] = ours[k + f"{n}.weight"], ours[k + f"{n}.bias"]
    sd = {k: v.detach().clone() for k, v in sd.items()}  # their own fp32 copies: nothing shared with kvgpt's model
    theirs.load_state_dict(sd, strict=True, assign=True)  # strict: a renamed tensor in a later version fails loudly
    theirs.out_head.weight = theirs.tok_emb.weight  # tied, one Parameter, as kvgpt's lm_head
    return theirs.to(dtype=torch.float32).eval()


def uncached_logits(theirs, prompt_ids: torch.Tensor) -> torch.Tensor:
    """Their full forward (no cache, positions from 0): (B, T) -> (B, T, V)."""
    theirs.reset_kv_cache()
    with torch.no_grad():
        return theirs(prompt_ids)


def build(model, workdir: pathlib.Path, threads: int) -> Engine:
    """An engine running their generate_text_simple_stream (greedy, no EOS) on `model`'s weights.

    workdir is unused (the conversion is in memory). Shapes: prompt_ids (B, T) -> Run.tokens (B, N).
    """
    from llms_from_scratch.kv_cache.generate import generate_text_simple_stream

    theirs = convert(model)

    def run(prompt_ids: torch.Tensor, new_tokens: int) -> Run:
        if new_tokens < 1:
            raise ValueError(f"new_tokens={new_tokens}: must be >= 1 (the first token ends the prefill)")
        if prompt_ids.size(1) + new_tokens > theirs.cfg["context_length"]:
            raise ValueError(f"prompt length {prompt_ids.size(1)} + new_tokens={new_tokens} exceeds their "
                             f"context_length={theirs.cfg['context_length']}")
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            start = time.perf_counter()
            stream = generate_text_simple_stream(theirs, prompt_ids, new_tokens)  # eos_token_id None: no stop
            steps, first, first_cpu = [], None, None
            try:
                for _ in range(new_tokens):  # next() exactly N times: one more would run a forward nobody needs
                    steps.append(next(stream))  # (B, 1)
                    if first is None:
                        first, first_cpu = time.perf_counter(), time.process_time()
                last, last_cpu = time.perf_counter(), time.process_time()
            finally:
                stream.close()  # leaves their torch.no_grad block
            tokens = torch.cat(steps, dim=1)  # (B, N)
            total = _ms(start, time.perf_counter())
        finally:
            torch.set_num_threads(old)
        return Run(tokens, _ms(start, first), _ms(first, last), total, _ms(first_cpu, last_cpu))

    return run


def logits_gap(model, prompt_ids: torch.Tensor) -> float:
    """max |their uncached logits - kvgpt's| on one prompt (B, T): the exactness of the weight map."""
    theirs = convert(model)
    with torch.no_grad():
        return (uncached_logits(theirs, prompt_ids) - model(prompt_ids)).abs().max().item()


if __name__ == "__main__":
    import sys

    from _harness import main

    from kvgpt.benchmark.engines import random_prompts

    def extra(model, engine, name, threads, batch):
        prompt = random_prompts(model.config.vocab_size, batch, 16, seed=0)
        return {"uncached_logits_max_abs_diff": logits_gap(model, prompt)}

    sys.exit(main(sys.modules[__name__], extra=extra))
