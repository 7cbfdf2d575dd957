"""Plots the chapters and the README show; each returns a matplotlib Figure.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

import math

import torch

from .attention import causal_mask


def position_similarity(model, n_positions: int | None = None):
    """Heatmap of the cosine similarity between learned position embeddings i and j.

    Shapes: the first n_positions rows (default block_size) of the (block_size, C) table -> an (N, N) image.

    Introduced in notebooks/02_embeddings.ipynb.
    """
    import matplotlib.pyplot as plt

    table = model.position_embedding.pos_embedding.weight.detach().float().cpu()  # (block_size, C)
    n = table.size(0) if n_positions is None else n_positions
    unit = torch.nn.functional.normalize(table[:n], dim=-1)  # (N, C)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    image = ax.imshow((unit @ unit.T).numpy(), cmap="RdBu_r", vmin=-1, vmax=1)  # (N, N)
    ax.set(title="cosine similarity of position embeddings", xlabel="position j", ylabel="position i")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def attention_weights(model, token_ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The softmax attention weights one layer of the model gives a sequence.

    Shapes: token_ids (B, T) -> (B, H, T, T); row i says how much query i reads each key (sums to 1).
    A forward hook captures the input the layer's attention really receives in a full forward; the
    weights are then softmax(q k^T / sqrt(D)) under the causal mask, as attend(..., "manual") computes.

    Introduced in notebooks/03_attention.ipynb.
    """
    if not 0 <= layer < len(model.blocks):
        raise ValueError(f"layer={layer}: the model has layers 0..{len(model.blocks) - 1}")
    attn = model.blocks[layer].attn
    inputs = []
    handle = attn.register_forward_hook(lambda module, args, out: inputs.append(args[0]))
    try:
        with torch.no_grad():
            model(token_ids)
            q, k, _ = attn.split_heads(inputs[0])  # (B, H, T, D)
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, T)
    finally:
        handle.remove()
    t = token_ids.size(1)
    scores = scores.masked_fill(~causal_mask(t, t, scores.device), float("-inf"))
    return torch.softmax(scores, dim=-1)  # (B, H, T, T)


def attention_heatmaps(weights: torch.Tensor, labels: list[str], title: str = ""):
    """One heatmap per head: query positions down, key positions across.

    Shapes: weights (H, T, T) for one sequence, labels T strings (e.g. its characters).

    Introduced in notebooks/03_attention.ipynb.
    """
    import matplotlib.pyplot as plt

    h = weights.size(0)
    fig, axes = plt.subplots(1, h, figsize=(2.9 * h, 3.2), squeeze=False)
    shown = [repr(c)[1:-1] if c.strip() else "␣" for c in labels]  # make spaces and newlines visible
    for i, ax in enumerate(axes[0]):
        ax.imshow(weights[i].detach().float().cpu().numpy(), cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"head {i}", fontsize=9)
        ax.set_xticks(range(len(shown)), shown, fontsize=7)
        ax.set_yticks(range(len(shown)), shown, fontsize=7)
        ax.set_xlabel("key", fontsize=8)
    axes[0][0].set_ylabel("query", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def kv_cache_fill(history: list[list[int]], slots: int, labels: list[str] | None = None):
    """Which cache slots each layer holds after each model call: one panel per layer.

    `history[c][l]` is layer l's cache length after call c (prefill, then one-token steps); slots
    written by call c are orange, older ones blue, empty ones grey. `slots` columns are drawn.

    Introduced in notebooks/04_kv_cache.ipynb.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    n_calls, n_layers = len(history), len(history[0])
    fig, axes = plt.subplots(1, n_layers, figsize=(2.6 * n_layers, 0.32 * n_calls + 1.3), squeeze=False)
    cmap = ListedColormap(["#e6e6e6", "#4c72b0", "#dd8452"])  # empty, filled earlier, written by this call
    for layer, ax in enumerate(axes[0]):
        grid = torch.zeros(n_calls, slots)  # (calls, slots)
        for c in range(n_calls):
            before = history[c - 1][layer] if c else 0
            grid[c, : min(before, slots)] = 1
            grid[c, min(before, slots) : min(history[c][layer], slots)] = 2
        ax.imshow(grid.numpy(), cmap=cmap, vmin=0, vmax=2, aspect="auto")
        ax.set_title(f"layer {layer} cache", fontsize=9)
        ax.set_xlabel("slot (position)", fontsize=8)
        ax.set_yticks(range(n_calls), labels or [f"call {c}" for c in range(n_calls)], fontsize=7)
        if layer:
            ax.set_yticklabels([])
    names = ("empty", "filled earlier", "written by this call")
    fig.legend([Patch(color=c) for c in cmap.colors], names, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def cache_bytes(lengths: list[int], bytes_by_kind: dict[str, list[int]], title: str = ""):
    """Memory a cache holds as generation proceeds: one line per cache kind.

    `bytes_by_kind[name][i]` is the cache's nbytes once it holds lengths[i] positions.

    Introduced in notebooks/04_kv_cache.ipynb.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for name, values in bytes_by_kind.items():
        _ = ax.plot(lengths, [v / 2**10 for v in values], marker=".", label=name)
    ax.set(xlabel="positions in the cache (S)", ylabel="KiB held", title=title, ylim=(0, None))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ---- 06_sampling: how each processor reshapes the next-token distribution ----

SAMPLING_SETTINGS = {  # one panel each in plot_processors: name -> Sampler keyword arguments
    "repetition_penalty=1.5": {"repetition_penalty": 1.5},
    "temperature=0.7": {"temperature": 0.7},
    "top_k=5": {"top_k": 5},
    "top_p=0.9": {"top_p": 0.9},
}


def token_label(tokenizer, token_id: int) -> str:
    """A readable tick label for one token: spaces as '␣', newlines as '\\n'."""
    return tokenizer.decode([token_id]).replace(" ", "␣").replace("\n", "\\n")


def plot_distribution(probs_before: torch.Tensor, probs_after: torch.Tensor, tokenizer, top: int = 20,
                      labels=("before", "after"), title: str | None = None, ax=None):
    """Bars of two next-token distributions side by side, over the `top` most likely tokens of either.

    Shapes: probs (V,) or (1, V). Tokens are ordered by the `before` probability. Draws into `ax` when
    given; the default title counts the tokens the `after` distribution keeps (probability > 0).
    Introduced in notebooks/06_sampling.ipynb.
    """
    import matplotlib.pyplot as plt

    before, after = probs_before.detach().float().reshape(-1).cpu(), probs_after.detach().float().reshape(-1).cpu()
    if before.shape != after.shape:
        raise ValueError(f"probs_before {tuple(before.shape)} and probs_after {tuple(after.shape)} differ in size")
    ids = torch.maximum(before, after).topk(min(top, before.numel())).indices  # (top,)
    ids = ids[before[ids].argsort(descending=True, stable=True)]
    fig, ax = plt.subplots(figsize=(8, 3)) if ax is None else (ax.figure, ax)
    x = torch.arange(len(ids)).numpy()
    _ = ax.bar(x - 0.2, before[ids].numpy(), width=0.4, color="0.7", label=labels[0])
    _ = ax.bar(x + 0.2, after[ids].numpy(), width=0.4, color="C0", label=labels[1])
    _ = ax.set_xticks(x, [token_label(tokenizer, int(i)) for i in ids])
    _ = ax.set_ylabel("probability")
    kept = int((after > 0).sum())
    _ = ax.set_title(title if title is not None else f"kept {kept} of {after.numel()} tokens", fontsize=10)
    _ = ax.legend(frameon=False, fontsize=8)
    return fig


def plot_processors(logits: torch.Tensor, tokenizer, history=None, settings: dict | None = None, top: int = 15):
    """One plot_distribution panel per sampler setting: softmax(logits) before, Sampler(...).probs after.

    Shapes: logits (V,) raw next-token logits; history: the ids seen so far (for the repetition penalty).
    `settings`: panel title -> Sampler keyword arguments (default SAMPLING_SETTINGS).
    Introduced in notebooks/06_sampling.ipynb.
    """
    import matplotlib.pyplot as plt

    from .sampling import Sampler

    settings = SAMPLING_SETTINGS if settings is None else settings
    rows = (len(settings) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(11, 2.8 * rows), squeeze=False)
    before = logits.detach().float().reshape(-1).softmax(-1)  # (V,)
    for ax, (name, knobs) in zip(axes.flat, settings.items()):
        after = Sampler(**knobs).probs(logits.detach().reshape(-1), history)
        kept = int((after > 0).sum())
        plot_distribution(before, after, tokenizer, top, ("softmax(logits)", name), f"{name}: kept {kept}", ax)
    for ax in list(axes.flat)[len(settings):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


# ---- 05_decoding and 07_batching: cost per decode step, and the padded-batch mask ----

def _running_median(values: list[float], window: int) -> list[float]:
    """Median over `window` neighbours: a trend line that ignores the odd slow step."""
    half = window // 2
    return [float(torch.tensor(values[max(0, i - half) : i + half + 1]).median()) for i in range(len(values))]


def plot_step_latency(series: dict, ylabel: str = "milliseconds per decode step", title: str | None = None,
                      first_step: int = 1, smooth: int = 9):
    """One line per series of per-step costs (measured ms, or counted FLOPs) against the decode step.

    series: {name: [cost of step first_step, first_step + 1, ...]}. Raw values are faint dots and the
    line is a running median over `smooth` steps; smooth=1 draws the exact values (e.g. FLOP counts).
    The y axis fits the lines, so a few slow outlier steps (another process) do not squash them.

    Introduced in notebooks/05_decoding.ipynb.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    top = 0.0
    for name, values in series.items():
        values = [float(v) for v in values]
        steps = list(range(first_step, first_step + len(values)))
        trend = _running_median(values, smooth) if smooth > 1 else values
        line = ax.plot(steps, trend, label=name, lw=2)[0]
        top = max([top, *trend])
        if smooth > 1:
            _ = ax.scatter(steps, values, s=6, alpha=0.25, color=line.get_color())
    ax.set(xlabel="decode step (new tokens so far)", ylabel=ylabel, title=title or "Cost of one decode step")
    ax.set_ylim(0, 1.3 * top if top > 0 else None)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_padding_mask(mask: torch.Tensor, positions: torch.Tensor | None = None, labels: list | None = None,
                      pad_lengths: torch.Tensor | None = None):
    """Each row's attention mask in a left-padded batch: which key slots every query slot may read.

    Shapes: mask (B, 1, T, S) or (B, T, S) bool (True = may attend); positions (B, T), the position each
    query slot is embedded at, shown on the y axis; labels, B panel titles; pad_lengths (B,), when
    given, draws the pad queries (their output is never read) in orange.

    Introduced in notebooks/07_batching.ipynb.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    mask = mask[:, 0] if mask.dim() == 4 else mask  # (B, T, S)
    b, t, s = mask.shape
    colors = ["#e6e6e6", "#4c72b0", "#dd8452"]  # hidden, visible, a pad query seeing itself
    fig, axes = plt.subplots(1, b, figsize=(2.5 * b + 0.8, 0.28 * t + 1.9), squeeze=False)
    for row, ax in enumerate(axes[0]):
        grid = mask[row].cpu().long()  # (T, S)
        queries = range(s - t, s)  # the slots of the T queries
        if pad_lengths is not None:
            pad_query = torch.tensor([q < int(pad_lengths[row]) for q in queries])  # (T,)
            grid[pad_query] *= 2
        ax.imshow(grid.numpy(), cmap=ListedColormap(colors), vmin=0, vmax=2)
        ax.set_xticks(range(s), [str(i) for i in range(s)], fontsize=7)
        ax.set_yticks(range(t), [f"{q}" if positions is None else f"{q} (pos {int(positions[row, q - (s - t)])})"
                                 for q in queries], fontsize=7)
        ax.set_xticks([x - 0.5 for x in range(1, s)], minor=True)
        ax.set_yticks([y - 0.5 for y in range(1, t)], minor=True)
        ax.grid(which="minor", color="white", lw=1)
        ax.tick_params(which="minor", length=0)
        ax.set(xlabel="key slot", title=labels[row] if labels else f"row {row}")
    axes[0][0].set_ylabel("query slot")
    legend = [Patch(color=colors[1], label="may attend"), Patch(color=colors[0], label="masked")]
    if pad_lengths is not None:
        legend.append(Patch(color=colors[2], label="pad query sees itself (output unused)"))
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


# ---- 08_benchmarks: benchmark tables as pictures (timings: the data comes from kvgpt.benchmark) ----

def _engine_lines(ax, df, x: str, y: str) -> None:
    """One line per engine of a benchmark table, in kvgpt.benchmark's engine colours."""
    from matplotlib.ticker import NullLocator

    from .benchmark.plots import COLORS

    for engine, d in df.groupby("engine", sort=False):
        _ = ax.plot(d[x], d[y], marker="o", label=engine, color=COLORS.get(engine))
    ticks = sorted(df[x].unique())
    ax.set(xscale="log", yscale="log", xticks=ticks, xticklabels=[str(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())  # only the measured x values are labelled
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def plot_throughput(df, reference: str | None = None):
    """Decode tokens/s (all rows together) against the batch size, one line per engine, log-log.

    df: ThroughputBenchmark.run() rows (engine, batch_size, decode_tokens_per_s). The dotted line is
    perfect scaling of the `reference` engine (default: the first): its smallest batch's rate per row times B.

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    reference = df.engine.iloc[0] if reference is None else reference
    ref = df[df.engine == reference].sort_values("batch_size")
    per_row = ref.decode_tokens_per_s.iloc[0] / ref.batch_size.iloc[0]
    _ = ax.plot(ref.batch_size, per_row * ref.batch_size, ls=":", color="k", lw=1, label=f"{reference} x B (perfect scaling)")
    _engine_lines(ax, df, "batch_size", "decode_tokens_per_s")
    ax.set(xlabel="batch size B", ylabel="decode tokens/s (all rows)", title="Throughput grows with the batch")
    fig.tight_layout()
    return fig


def plot_position_latency(df):
    """Milliseconds of one decode step against the sequence length, cached vs recomputing everything.

    df: step_latency() rows (position, engine, ms).

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    _engine_lines(ax, df, "position", "ms")
    ax.set(xlabel="sequence length after the step", ylabel="ms for that one step",
           title="One decode step: cached vs no cache")
    fig.tight_layout()
    return fig


def plot_engine_latency(df, floor_ms: float | None = None):
    """Decode ms per token of each engine as bars from zero, with the memory-bandwidth floor if given.

    df: LatencyBenchmark.run() rows (engine, decode_ms_per_token).

    Introduced in notebooks/08_benchmarks.ipynb.
    """
    import matplotlib.pyplot as plt

    from .benchmark.plots import COLORS

    fig, ax = plt.subplots(figsize=(6, 0.45 * len(df) + 1.4))
    _ = ax.barh(df.engine, df.decode_ms_per_token, color=[COLORS.get(e, "gray") for e in df.engine])
    if floor_ms is not None:
        _ = ax.axvline(floor_ms, color="k", ls="--", lw=1, label=f"bandwidth floor {floor_ms:.3f} ms")
        ax.legend(fontsize=8, loc="lower right")
    ax.set(xlim=(0, None), xlabel="ms per generated token (lower is better)", title="Decode latency, batch 1")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig
