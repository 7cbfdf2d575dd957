"""Pictures of a paged KV cache: block tables pointing into the pool, and memory used vs reserved.

matplotlib is imported inside the functions: the engine itself never needs it.
"""

from __future__ import annotations

SEQUENCE_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
SHARED_BLOCK_COLOR = "#333333"


def plot_block_tables(cache, names: dict | None = None):
    """Each sequence's block table (left) and the pool's blocks and slots (right), coloured by owner.

    `cache` is a kvgpt.serving.PagedKVCache; names maps seq_id -> label. A block held by two or more
    sequences is drawn dark (shared prefix); a cached block (refcount 0, still findable) is hatched;
    unfilled slots of a block in use are pale. Introduced in notebooks/10_paged_attention.ipynb.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    a, bs = cache.allocator, cache.block_size
    seqs = sorted(cache.tables)
    names = names or {s: f"seq {s}" for s in seqs}
    color = {s: SEQUENCE_COLORS[i % len(SEQUENCE_COLORS)] for i, s in enumerate(seqs)}
    width = max([len(cache.tables[s]) for s in seqs] + [1])
    fig, (left, right) = plt.subplots(1, 2, figsize=(3.2 + 0.55 * width + 0.3 * bs, 0.32 * a.num_blocks + 1.4),
                                      gridspec_kw={"width_ratios": [width + 1.5, bs]})
    fill = {}  # block -> (owner colour, filled slots)
    for r, s in enumerate(seqs):
        for j, block in enumerate(cache.tables[s]):
            shared = a.ref_counts[block] > 1
            left.add_patch(Rectangle((j, r), 0.92, 0.85, color=SHARED_BLOCK_COLOR if shared else color[s]))
            left.text(j + 0.46, r + 0.45, str(block), ha="center", va="center", color="white", fontsize=8)
            filled = min(bs, max(cache.lengths[s] - j * bs, 0))
            fill[block] = (SHARED_BLOCK_COLOR if shared else color[s], max(filled, fill.get(block, ("", 0))[1]))
    left.set(xlim=(0, width), ylim=(len(seqs), 0), title="block tables (physical block ids)")
    left.set_yticks([r + 0.45 for r in range(len(seqs))], [names[s] for s in seqs], fontsize=8)
    left.set_xticks([j + 0.46 for j in range(width)], [f"#{j}" for j in range(width)], fontsize=7)
    left.set_xlabel("logical block (positions #j x block_size ..)", fontsize=8)
    for block in range(a.num_blocks):
        owner, filled = fill.get(block, (None, 0))
        for slot in range(bs):
            face = "#e6e6e6" if owner is None else owner
            cached = block in a.cached
            right.add_patch(Rectangle((slot, block), 0.9, 0.82, facecolor="#f4f4f4" if cached else face,
                                      alpha=1.0 if owner is None or slot < filled else 0.3,
                                      hatch="///" if cached else None, edgecolor="#999999" if cached else "none"))
    right.set(xlim=(0, bs), ylim=(a.num_blocks, 0), title=f"pool: {a.num_blocks} blocks x {bs} slots")
    right.set_yticks([b + 0.41 for b in range(a.num_blocks)], [f"block {b}" for b in range(a.num_blocks)], fontsize=7)
    right.set_xticks([s + 0.45 for s in range(bs)], [str(s) for s in range(bs)], fontsize=7)
    right.set_xlabel("slot in block", fontsize=8)
    for ax in (left, right):
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    legend = [Patch(color=color[s], label=names[s]) for s in seqs] + [Patch(color=SHARED_BLOCK_COLOR, label="shared (refcount > 1)"),
              Patch(facecolor="#f4f4f4", hatch="///", edgecolor="#999999", label="cached (refcount 0)"),
              Patch(color="#e6e6e6", label="free")]
    fig.legend(handles=legend, loc="lower center", ncol=min(len(legend), 4), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def plot_kv_memory(rows: dict[str, tuple[int, int]], title: str = ""):
    """KV bytes actually used vs reserved, one bar per layout: rows[name] = (used bytes, reserved bytes).

    Introduced in notebooks/10_paged_attention.ipynb.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 0.55 * len(rows) + 1.2))
    for i, (name, (used, reserved)) in enumerate(rows.items()):
        ax.barh(i, reserved / 2**10, color="#e6e6e6", label="reserved" if i == 0 else None)
        ax.barh(i, used / 2**10, color="#4c72b0", label="used (slots filled)" if i == 0 else None)
        ax.text(reserved / 2**10, i, f" {100 * used / reserved:.0f}% used", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="KiB of keys and values", title=title)
    ax.set_xlim(0, max(r for _, r in rows.values()) / 2**10 * 1.25)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
