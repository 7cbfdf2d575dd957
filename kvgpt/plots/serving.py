"""Serving pictures for chapter 11: rows joining and leaving over steps, each step's token budget, throughput and
latency offline, time to first token as requests arrive faster.

matplotlib is imported inside the functions: the engine itself never needs it. They return bare Figures (off
pyplot's global state, so serve-bench can save them from a script): end the cell with `fig`, or display(fig);
kvgpt.notebook.setup() turns on inline figures so they are stored as PNGs. plt.show() shows only pyplot figures.
Introduced in notebooks/11_continuous_batching.ipynb.
"""

from __future__ import annotations

from pathlib import Path

from .pool import plot_memory_trace
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


def plot_serving(throughput, note: str = ""):
    """Useful tokens/s, time to first token and p50/p99 inter-token latency per model and engine.

    throughput: the serve-bench table (model, engine, tokens_per_s, ttft_p50_ms, itl_p50_ms, itl_p99_ms); note: a line
    under the legend (the machine the numbers were measured on).
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
    legend_below(fig, *axes[0].get_legend_handles_labels(), note=note)
    return fig


def plot_step_budget(plans: list, budget: int, highlight: int | None = None):
    """Each step's token-rows by kind, against the step's budget: decode rows (one token each) and prompt chunks.

    plans: serving_report.record_plans' list, one [(request_id, tokens, decode?)] per step; highlight: a request
    whose chunks are drawn apart (the long prompt being chunked). Introduced in notebooks/11_continuous_batching.ipynb.
    """
    fig, (ax,) = bare_figure(1, width=9, height=3.6)
    x = range(len(plans))
    decode = [sum(n for _, n, d in plan if d) for plan in plans]
    mine = [sum(n for r, n, d in plan if not d and r == highlight) for plan in plans]
    other = [sum(n for r, n, d in plan if not d and r != highlight) for plan in plans]
    ax.bar(x, decode, color="#08519c", label="decode rows (1 token each)")
    ax.bar(x, other, bottom=decode, color="#9ecae1", label="prompt chunks")
    if highlight is not None:
        ax.bar(x, mine, bottom=[a + b for a, b in zip(decode, other)], color="#fd8d3c",
               label=f"chunks of request {highlight}")
    ax.axhline(budget, color="#636363", ls="--", lw=1.2, label=f"max_num_batched_tokens = {budget}")
    ax.set(xlabel="engine step (one flat model call)", ylabel="token-rows in the call", ylim=(0, budget * 1.15),
           title="each step's token budget: decode rows first, then prompt chunks")
    legend_below(fig, *ax.get_legend_handles_labels(), ncol=2)
    return fig


def plot_ttft_vs_rate(online, note: str = ""):
    """Time to first token (p99 solid, p50 dashed) against the request rate, per engine, one panel per model.

    online: figures/serve_online.csv (model, rate, engine, ttft_p50_ms, ttft_p99_ms); rate inf = every request at
    t = 0. Introduced in notebooks/11_continuous_batching.ipynb.
    """
    models = list(dict.fromkeys(online.model))
    fig, axes = bare_figure(len(models), width=4.8, height=3.8)
    for ax, model in zip(axes, models):
        part = online[online.model == model]
        rates = sorted(set(part.rate))
        names = ["all at t=0" if r == float("inf") else f"{r:g}" for r in rates]
        for engine in [e for e in ENGINE_COLORS if e in set(part.engine)]:
            rows = part[part.engine == engine].set_index("rate")
            xs = [i for i, r in enumerate(rates) if r in rows.index]
            for col, style in (("ttft_p99_ms", "o-"), ("ttft_p50_ms", "o--")):
                ax.plot(xs, [rows.loc[rates[i], col] for i in xs], style, color=ENGINE_COLORS[engine],
                        alpha=1.0 if col.endswith("p99_ms") else 0.5,
                        label=f"{engine}, {'p99' if col.endswith('p99_ms') else 'p50'}")
        ax.set_xticks(range(len(rates)), names, fontsize=8)
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
        ax.set(xlabel="requests per second (Poisson arrivals)", ylabel="time to first token (ms)")
        ax.set_title(f"{model}", fontsize=9)
    handles = {}
    for ax in axes:  # one legend entry per line kind, whichever panel drew it
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    legend_below(fig, list(handles.values()), list(handles), ncol=2, note=note)
    return fig


def save_serving_figures(results: dict, out: Path, prefix: str = "serve_") -> list[Path]:
    """serve-bench's figures as PNG (no version stamp: same numbers, same bytes); the timed ones name the CPU."""
    meta = dict(zip(results["meta"].key, results["meta"].value)) if "meta" in results else {}
    note = f"serve-bench on {meta['cpu']}, {meta['cpu_count']} cores, load average {meta['load_average_1m_at_end']}" \
        if meta else ""
    trace = results["memory_trace"]
    first_model = trace.model.iloc[0]
    figs = {"throughput": plot_serving(results["throughput"], note),
            "memory": plot_memory_trace(trace[trace.model == first_model], title=f"{first_model}: KV memory per step "
                                        "(LLMEngine, the offline workload)")}
    gantt = results["gantt"]
    first = gantt[gantt.model == gantt.model.iloc[0]]
    steps = [list(first[first.step == s].request) for s in range(first.step.max() + 1)]
    figs["gantt"] = plot_row_gantt(steps, title=f"{first.model.iloc[0]}: continuous batching, rows per step")
    if "online" in results:
        figs["ttft_rate"] = plot_ttft_vs_rate(results["online"], note)
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
