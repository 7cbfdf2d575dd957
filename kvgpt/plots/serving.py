"""Serving pictures for chapter 11: rows joining and leaving over steps, KV memory reserved vs used, throughput.

matplotlib is imported inside the functions: the engine itself never needs it. They return bare Figures (off
pyplot's global state, so serve-bench can save them from a script): end the cell with `fig`, or display(fig);
kvgpt.notebook.setup() turns on inline figures so they are stored as PNGs. plt.show() shows only pyplot figures.
Introduced in notebooks/11_continuous_batching.ipynb.
"""

from __future__ import annotations

from pathlib import Path

from .style import bare_figure, legend_below, plain_log_ticks

ENGINE_COLORS = {"static batching (Part I)": "#9ecae1", "continuous batching (kvgpt LLMEngine)": "#08519c",
                 "vLLM": "#fd8d3c"}


def plot_row_gantt(steps: list, n_requests: int | None = None, wasted: list | None = None, title: str = ""):
    """Which request got a token at each engine step: one line per request, one column per step.

    steps[s]: request ids that made a token at step s (a Timeline's steps, or StepOutputs' request ids).
    wasted[s]: rows that ran at step s but made nothing anyone asked for (static batching's finished rows),
    drawn in orange. Introduced in notebooks/11_continuous_batching.ipynb.
    """
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    n = n_requests if n_requests is not None else 1 + max((r for s in steps for r in s), default=-1)
    grid = np.zeros((n, len(steps)), dtype=np.int8)  # (requests, steps): 0 idle, 1 token, 2 wasted row
    for s, rows in enumerate(steps):
        grid[list(rows), s] = 1
    for s, rows in enumerate(wasted or []):
        grid[list(rows), s] = 2
    fig, (ax,) = bare_figure(1, width=9, height=0.12 * n + 1.8)
    ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=ListedColormap(["#f2f2f2", "#08519c", "#fd8d3c"]),
              vmin=0, vmax=2)
    ax.set(xlabel="engine step", ylabel="request", title=title or f"{n} requests over {len(steps)} steps")
    legend = [Patch(color="#08519c", label="made a token")]
    if wasted:
        legend.append(Patch(color="#fd8d3c", label="ran, nothing asked for (wasted row-step)"))
    legend_below(fig, legend, [p.get_label() for p in legend])
    return fig


def plot_layout_memory(memory):
    """KV bytes reserved vs used per layout (MB), with the utilisation written on each bar.

    memory: rows of kv_memory (layout, reserved_bytes, used_bytes, utilization). Introduced in
    notebooks/11_continuous_batching.ipynb.
    """
    fig, (ax,) = bare_figure(1, width=8, height=3.6)
    labels = list(memory.layout)
    y = range(len(labels))
    ax.barh(y, memory.reserved_bytes / 2**20, color="#dddddd", label="reserved")
    ax.barh(y, memory.used_bytes / 2**20, color="#08519c", label="used (tokens' keys and values)")
    for i, (res, u) in enumerate(zip(memory.reserved_bytes, memory.utilization)):
        ax.text(res / 2**20, i, f" {100 * u:.0f}% used", va="center", fontsize=8)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="KV cache MB", title="KV memory: reserved vs used")
    ax.set_xlim(0, memory.reserved_bytes.max() / 2**20 * 1.25)
    legend_below(fig, *ax.get_legend_handles_labels())
    return fig


def plot_serving(throughput):
    """Useful tokens/s, time to first token and p50/p99 inter-token latency per model and engine.

    throughput: the serve-bench table (model, engine, tokens_per_s, ttft_p50_ms, itl_p50_ms, itl_p99_ms).
    Introduced in notebooks/11_continuous_batching.ipynb.
    """
    models = list(dict.fromkeys(throughput.model))
    fig, axes = bare_figure(3, width=4.2, height=3.6)
    panels = (("tokens_per_s", "useful tokens/s (higher is better)"), ("ttft_p50_ms", "time to first token, p50 (ms)"),
              ("itl_p99_ms", "inter-token latency p99 (ms)"))
    engines = [e for e in ENGINE_COLORS if e in set(throughput.engine)]
    width = 0.8 / len(engines)
    for ax, (col, title) in zip(axes, panels):
        for j, engine in enumerate(engines):
            rows = throughput[throughput.engine == engine].set_index("model")
            xs = [i + (j - (len(engines) - 1) / 2) * width for i, m in enumerate(models) if m in rows.index]
            vals = [rows.loc[m, col] for m in models if m in rows.index]
            ax.bar(xs, vals, width, color=ENGINE_COLORS[engine], label=engine)
        ax.set_xticks(range(len(models)), models, fontsize=8)
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
        ax.set_title(title, fontsize=9)
    legend_below(fig, *axes[0].get_legend_handles_labels())
    return fig


def save_serving_figures(results: dict, out: Path, prefix: str = "serve_") -> list[Path]:
    """serve-bench's figures as PNG (no version stamp: same numbers, same bytes)."""
    figs = {"throughput": plot_serving(results["throughput"]),
            "memory": plot_layout_memory(results["memory"][results["memory"].model == results["memory"].model.iloc[0]])}
    gantt = results["gantt"]
    first = gantt[gantt.model == gantt.model.iloc[0]]
    steps = [list(first[first.step == s].request) for s in range(first.step.max() + 1)]
    figs["gantt"] = plot_row_gantt(steps, title=f"{first.model.iloc[0]}: continuous batching, rows per step")
    paths = []
    for name, fig in figs.items():
        path = Path(out) / f"{prefix}{name}.png"
        fig.savefig(path, dpi=100, metadata={"Software": None})
        paths.append(path)
    return paths


def plot_online(results, cpu: str, note: str = ""):
    """`vllm bench serve` against two servers: TTFT and TPOT (p50 solid, p99 dashed) vs request rate, a row per model.

    results: figures/serve_online_results.csv as a DataFrame (model, server, rate, ttft/tpot_p50/p99_ms).
    Introduced in notebooks/15_serving.ipynb.
    """
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(results["model"]))
    fig = Figure(figsize=(11, 3.6 * len(models)))
    axes = fig.subplots(len(models), 2, squeeze=False)
    for row, model in zip(axes, models):
        part = results[results["model"] == model]
        for server, color in (("kvgpt", ENGINE_COLORS["continuous batching (kvgpt LLMEngine)"]),
                              ("vLLM", ENGINE_COLORS["vLLM"])):
            s = part[part["server"] == server]
            for ax, metric in zip(row, ("ttft", "tpot")):
                rates = s["rate"].astype(str)  # "inf" too: one category per rate, in the sweep's order
                ax.plot(rates, s[f"{metric}_p50_ms"], "o-", color=color, label=f"{server} p50")
                ax.plot(rates, s[f"{metric}_p99_ms"], "o--", color=color, alpha=0.6, label=f"{server} p99")
        for ax, what in zip(row, ("time to first token (ms)", "time per output token (ms)")):
            ax.set(title=f"{model}: {what}", xlabel="request rate (requests/s; inf = all at once)", yscale="log")
            ax.legend(fontsize=8)
    fig.suptitle(f"vllm bench serve against kvgpt serve and vllm serve on the same folder - {cpu}{note}", fontsize=10)
    fig.tight_layout()
    return fig
