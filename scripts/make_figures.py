"""Write the README's explanatory figures to figures/, byte-stable, from the embedded model.

Usage: python scripts/make_figures.py   (make figures)
Each figure comes from the same kvgpt.plots function the chapters call, on fixed inputs, on the CPU
with 2 threads; PNGs are saved without the matplotlib version stamp so equal pixels give equal bytes.
The measured figures (latency, throughput, memory: figures/bench_*.png) come from `make bench`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from kvgpt import AutoregressiveGenerator, KVCacheManager, load_pretrained, plots  # noqa: E402
from kvgpt.batching import pad_prompts  # noqa: E402
from kvgpt.notebook import setup  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "figures"
LINE = "ROMEO:\nBut soft, what light"


def save(fig, name: str) -> None:
    path = OUT / name
    fig.savefig(path, dpi=110, metadata={"Software": None})
    print(path.relative_to(OUT.parent))


@torch.no_grad()
def main() -> int:
    setup()
    model, tok = load_pretrained("shakespeare-char")
    ids = torch.tensor([tok.encode(LINE)])  # (1, T)
    save(plots.architecture_diagram(model.config), "architecture.png")
    save(plots.cached_vs_uncached(list("ROMEO:")), "cached_vs_uncached.png")
    weights = plots.attention_weights(model, ids, layer=0)[0]  # (H, T, T)
    save(plots.attention_heatmaps(weights, list(LINE), "layer 0 attention on a line of Romeo and Juliet"),
         "attention_heatmap.png")

    cache, history = KVCacheManager(model.config, batch_size=1, kind="static", capacity=16), []
    model.prefill(ids[:, :6], cache)
    history.append([c.length for c in cache.layer_caches])
    for pos in range(6, 12):
        model.forward_step(ids[:, pos], pos, cache)
        history.append([c.length for c in cache.layer_caches])
    labels = ["prefill (6 tokens)"] + [f"step at position {p}" for p in range(6, 12)]
    save(plots.kv_cache_fill(history, slots=16, labels=labels), "kv_cache_fill.png")

    prompt = tok.encode("ROMEO:\nI will")
    logits = model(torch.tensor([prompt]))[0, -1]  # (V,)
    save(plots.plot_processors(logits, tok, history=prompt), "sampling_knobs.png")

    rows = [tok.encode(s) for s in ("JULIET:\nO", "ROMEO:\nI dare", "Ay")]
    padded, mask = pad_prompts(rows, pad_id=0)
    cache = KVCacheManager(model.config, batch_size=len(rows), kind="static")
    cache.set_padding(mask)
    save(plots.plot_padding_mask(cache.attention_mask(padded.size(1)), cache.position_ids(padded.size(1)),
                                 [repr(tok.decode(r)) for r in rows], cache.pad_lengths), "padding_mask.png")

    text = tok.decode(AutoregressiveGenerator(model).generate(tok.encode("ROMEO:\n"), 200))
    (OUT / "sample_greedy.txt").write_text(text + "\n")
    print("figures/sample_greedy.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
