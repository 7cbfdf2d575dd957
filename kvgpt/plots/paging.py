"""Pictures of a paged KV cache: block tables pointing into the pool, one flat model call's writes and reads,
and the hash chain that names full blocks.

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


def plot_flat_call(batch, names: list[str] | None = None):
    """One flat model call over a paged pool: the N new tokens in one row (top), and per token (a column) the pool
    slots it writes (slot_mapping) and the slots its query reads (keys 0 .. its position, through its table).

    `batch` is a kvgpt.serving.PagedBatch; names[r] labels its r-th sequence. Nothing is padded: every column is
    a real token. Introduced in notebooks/10_paged_attention.ipynb.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    bs, nb = batch.cache.block_size, batch.cache.allocator.num_blocks
    rows, pos, written = batch.query_row.tolist(), batch.query_pos.tolist(), batch.slot_mapping.tolist()
    tables = batch.block_tables.tolist()
    names = names or [f"seq {r}" for r in range(len(tables))]
    n = len(rows)
    fig, (top, grid) = plt.subplots(2, 1, figsize=(1.6 + 0.62 * n, 1.9 + 0.2 * nb * bs),
                                    gridspec_kw={"height_ratios": [1.3, 0.2 * nb * bs]}, sharex=True)
    for i, (r, p) in enumerate(zip(rows, pos)):
        top.add_patch(Rectangle((i, 0), 0.94, 1, color=SEQUENCE_COLORS[r % len(SEQUENCE_COLORS)]))
        top.text(i + 0.47, 0.5, f"{names[r]}\npos {p}", ha="center", va="center", color="white", fontsize=7)
        for q in range(p + 1):  # the keys query i attends to: its own sequence's positions 0 .. p
            slot = tables[r][q // bs] * bs + q % bs
            new = slot == written[i]
            grid.add_patch(Rectangle((i, slot), 0.94, 0.9, color=SEQUENCE_COLORS[r % len(SEQUENCE_COLORS)], alpha=1.0 if new else 0.35))
            if new:
                grid.text(i + 0.47, slot + 0.45, "w", ha="center", va="center", color="white", fontsize=7)
    top.set(xlim=(0, n), ylim=(0, 1), title=f"one model call: token_ids (1, {n}), every sequence's new tokens in turn")
    top.set_yticks([])
    for b in range(1, nb):
        grid.axhline(b * bs - 0.05, color="#999999", lw=0.6)
    grid.set(ylim=(nb * bs, 0), xlabel="flat token index (the column's query)")
    grid.set_yticks([b * bs + bs / 2 - 0.05 for b in range(nb)], [f"block {b}" for b in range(nb)], fontsize=7)
    grid.set_xticks([i + 0.47 for i in range(n)], [str(i) for i in range(n)], fontsize=7)
    grid.set_ylabel(f"pool slots ({nb} blocks x {bs})", fontsize=8)
    for ax in (top, grid):
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    legend = [Patch(color="#777777", alpha=0.35, label="read by this column's query (in place)"),
              Patch(color="#777777", label="w: written by this call (slot_mapping)")]
    fig.legend(handles=legend, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def plot_hash_chain(sequences: dict, block_size: int, decode=None):
    """Each sequence's blocks left to right: a full block's hash covers its parent's hash and its tokens (an arrow),
    so one changed token changes every later hash; a block whose hash an earlier row already has is drawn dark
    (reusable), the partial last block has no hash yet.

    sequences: {label: token ids}; decode(ids) -> text shown in each block (default: the ids).
    Introduced in notebooks/10_paged_attention.ipynb.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, Patch, Rectangle

    from ..serving.blocks import prefix_hashes

    decode = decode or (lambda ids: " ".join(map(str, ids)))
    width = max(-(-len(ids) // block_size) for ids in sequences.values())
    fig, ax = plt.subplots(figsize=(1.2 + 1.55 * width, 0.75 * len(sequences) + 1.1))
    seen = set()
    for r, (label, ids) in enumerate(sequences.items()):
        hashes = prefix_hashes(list(ids), block_size)
        for j in range(-(-len(ids) // block_size)):
            chunk = decode(list(ids[j * block_size : (j + 1) * block_size]))
            if j < len(hashes):
                face = SHARED_BLOCK_COLOR if hashes[j] in seen else SEQUENCE_COLORS[r % len(SEQUENCE_COLORS)]
                ax.add_patch(Rectangle((j * 1.5, r), 1.15, 0.7, color=face))
                ax.text(j * 1.5 + 0.575, r + 0.35, f"{chunk!r}\n#{hashes[j] % 10**4:04d}", ha="center", va="center",
                        color="white", fontsize=7)
            else:
                ax.add_patch(Rectangle((j * 1.5, r), 1.15, 0.7, fill=False, ls="--", ec="#777777"))
                ax.text(j * 1.5 + 0.575, r + 0.35, f"{chunk!r}\nno hash", ha="center", va="center", fontsize=7)
            if j:
                ax.add_patch(FancyArrowPatch((j * 1.5 - 0.33, r + 0.35), (j * 1.5 - 0.02, r + 0.35),
                                             arrowstyle="-|>", mutation_scale=8, color="#555555"))
        seen |= set(hashes)
    ax.set(xlim=(-0.1, width * 1.5), ylim=(len(sequences), -0.15))
    ax.set_yticks([r + 0.35 for r in range(len(sequences))], [str(k) for k in sequences], fontsize=8)
    ax.set_xticks([j * 1.5 + 0.575 for j in range(width)], [f"block {j}" for j in range(width)], fontsize=7)
    ax.set_title(f"hash(parent hash, {block_size} tokens): last 4 digits", fontsize=9)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    legend = [Patch(color=SHARED_BLOCK_COLOR, label="hash seen in an earlier row: reusable"),
              Patch(fill=False, ls="--", ec="#777777", label="partial block: not hashed yet")]
    fig.legend(handles=legend, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig
