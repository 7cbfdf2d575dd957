"""Pictures of a KV pool's bytes: reserved once, held by requests (allocated blocks), filled (used slots), and how
many requests a pool of fixed size serves at once.

matplotlib is imported inside the functions: the engine itself never needs it. They return bare Figures (off
pyplot's global state); kvgpt.notebook.setup() turns on inline figures, so a cell ending in `fig` stores a PNG.
Introduced in notebooks/10_paged_attention.ipynb.
"""

from __future__ import annotations

from .style import bare_figure, legend_below

MIB = 2**20
RESERVED, HELD, FILLED = "#bdbdbd", "#6baed6", "#08519c"
REFERENCE_STYLES = ("--", ":", "-.")


def plot_memory_trace(trace, references: dict | None = None, title: str = "", note: str = ""):
    """KV bytes per engine step, kept apart: the pool reserved once, the blocks requests hold, the slots they filled.

    trace: rows with step, reserved_bytes, allocated_bytes, used_bytes (serving_report.engine_memory_trace, or
    figures/serve_memory_trace.csv for one model); references: {label: bytes} drawn as horizontal lines (what a
    contiguous layout reserves for the same requests). Introduced in notebooks/10_paged_attention.ipynb.
    """
    steps = [int(s) for s in trace["step"]]
    fig, (ax,) = bare_figure(1, width=8.5, height=4.0)
    ax.fill_between(steps, [b / MIB for b in trace["allocated_bytes"]], color=HELD, step="post",
                    label="held by requests (blocks allocated)")
    ax.fill_between(steps, [b / MIB for b in trace["used_bytes"]], color=FILLED, step="post",
                    label="filled (slots holding a key/value)")
    ax.step(steps, [b / MIB for b in trace["reserved_bytes"]], where="post", color="#636363", lw=4, alpha=0.5,
            label="reserved (the pool, allocated once)")  # wide and pale: a reference line on it stays visible
    for (name, nbytes), style in zip((references or {}).items(), REFERENCE_STYLES):
        ax.axhline(nbytes / MIB, color="#d94801", ls=style, lw=1.2, label=name)
    top = max([max(trace["reserved_bytes"])] + list((references or {}).values())) / MIB
    ax.set(xlabel="engine step", ylabel="MiB of keys and values", ylim=(0, top * 1.08), xlim=(0, max(steps) + 1),
           title=title or "KV memory per step: reserved vs held vs filled")
    legend_below(fig, *ax.get_legend_handles_labels(), ncol=2, note=note)
    return fig


def plot_pool_concurrency(rows, static_rows: dict | None = None):
    """Requests served at once by one pool of fixed size, as the seat limit (max_num_seqs) rises.

    rows: one per max_num_seqs with peak_running, preemptions, requests_preempted (serving_report.pool_concurrency);
    static_rows: {label: rows a contiguous cache of the same bytes holds}, drawn as horizontal lines.
    Introduced in notebooks/10_paged_attention.ipynb.
    """
    seats = [int(s) for s in rows["max_num_seqs"]]
    x = range(len(seats))
    fig, (left, right) = bare_figure(2, width=4.6, height=3.8)
    left.bar(x, rows["peak_running"], color=FILLED, label="paged: most requests running at once")
    for (name, n), style in zip((static_rows or {}).items(), REFERENCE_STYLES):
        left.axhline(n, color="#d94801", ls=style, lw=1.2, label=name)
    left.set(xlabel="max_num_seqs (seats)", ylabel="requests running at once", title="requests in one pool")
    right.bar(x, rows["preemptions"], color="#fd8d3c", label="preemptions (a request's blocks taken back)")
    for i, n in enumerate(rows["preemptions"]):
        right.text(i, n, f"{int(n)}", ha="center", va="bottom", fontsize=8)
    right.set(xlabel="max_num_seqs (seats)", ylabel="preemptions", title="the price of too many seats",
              ylim=(0, max(max(rows["preemptions"]), 1) * 1.25))
    for ax in (left, right):
        ax.set_xticks(list(x), [str(s) for s in seats])
    handles, labels = left.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    legend_below(fig, handles + more[0], labels + more[1], ncol=2)
    return fig
