"""The peer: llama.cpp (through llama-cpp-python 0.3.36, built from source) on kvgpt's weights as an F32 GGUF.

`write_gguf` stores the model for llama.cpp's "gpt2" architecture with the `gguf` package's GGUFWriter; the names,
shapes and keys are the ones vendor/llama.cpp/src/models/gpt2.cpp loads and conversion/gpt2.py (GPT2Model) writes:
    token_embd (V, C) · position_embd (block_size, C) · blk.N.attn_norm · blk.N.attn_qkv (3C, C), rows q | k | v,
    exactly kvgpt's qkv_proj · blk.N.attn_output · blk.N.ffn_norm · blk.N.ffn_up (4C, C) · blk.N.ffn_down (C, 4C)
    (each .weight and .bias) · output_norm. Every matrix is kvgpt's nn.Linear weight as is ((out, in) in numpy is
    ggml's {in, out}; the converter transposes only HF's Conv1D to reach the same layout).
    No output.weight: gpt2.cpp marks it TENSOR_NOT_REQUIRED and, when absent, uses token_embd (TENSOR_DUPLICATED):
    the LM head stays tied, as kvgpt has it.
    Keys: gpt2.context_length, embedding_length, feed_forward_length (4C), block_count, attention.head_count,
    attention.layer_norm_epsilon (1e-5; gpt2.cpp reads it), general.file_type ALL_F32.
The tokenizer: kvgpt hands over token ids, so the file has tokenizer.ggml.model "none" and gpt2.vocab_size = V;
llama-vocab.cpp then adds V dummy tokens (no BOS/EOS/merges) and nothing ever tokenizes text.
The K/V cache is asked for in F32 (type_k = type_v = GGML_TYPE_F32): llama.cpp's default is F16, which would
round every cached key and value. Flash attention stays off (Llama's default).
Exactness: the tokens equal kvgpt's on both benchmark models (B = 1 and 8), but the logits differ by ~1e-3
(GPT-2-small) to ~6e-3 (char model), not fp32's ~1e-5: ggml's CPU GELU is a lookup table of fp16 values indexed by
the input rounded to fp16 (ggml-cpu/vec.h `#define GGML_GELU_FP16`, no build option). Emulating that table in
kvgpt takes the char model's gap from 5.6e-3 to 1.7e-4 (GPT-2-small: 9.9e-4 to 5.9e-4; the rest is consistent
with fp32 rounding noise pushed across fp16 rounding boundaries, not pinned down further).

Greedy, through llama.cpp's own API (llama_decode on a llama_batch, as Llama.eval does it): one decode of the
prompt(s) with an output row for each sequence's last token only, argmax, then one decode per step of one token
per sequence; exactly N tokens, no EOS stop. The logits are llama_get_logits' rows (B, V), read as numpy.
Batching: B sequences are B llama.cpp sequence ids in one context (n_seq_max = B, each its own block_size cells);
B = 1 runs in the Llama object's own context. The prompts are equal-length (no padding), as the benchmark sends.
Threads: n_threads = n_threads_batch = `threads` (llama.cpp's own thread pool; torch is not involved).
Shapes: prompt_ids (B, T) -> Run.tokens (B, N).
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np
import torch

from kvgpt.benchmark.engines import Engine, Run, _ms

NAME = "llama.cpp"


def available() -> str | None:
    """None when llama_cpp and gguf import here, else the reason (the failed build's, if install.sh wrote one)."""
    failed = pathlib.Path(sys.prefix) / ".llamacpp-failed"
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except Exception as e:  # ImportError, or OSError when the shared library does not load
        reason = failed.read_text().strip() if failed.is_file() else ""
        return f"llama_cpp does not import: {type(e).__name__}: {e}" + (f" (build: {reason})" if reason else "")
    return None


def versions() -> dict:
    from kvgpt.benchmark.report import package_versions

    out = package_versions("llama-cpp-python", "gguf", "torch", "kvgpt")
    return out


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """llama.cpp gpt2 tensor name -> float32 numpy array, from kvgpt's state dict (no copies of the head)."""
    c = model.config
    if c.kv_heads != c.n_heads:
        raise ValueError(f"model: n_kv_heads={c.n_kv_heads} != n_heads={c.n_heads}; written as GPT-2 (multi-head)")
    sd = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["token_embedding.embedding.weight"],  # (V, C)
           "position_embd.weight": sd["position_embedding.pos_embedding.weight"],  # (block_size, C)
           "output_norm.weight": sd["final_layernorm.weight"], "output_norm.bias": sd["final_layernorm.bias"]}
    names = {"ln_1": "attn_norm", "attn.qkv_proj": "attn_qkv", "attn.out_proj": "attn_output", "ln_2": "ffn_norm",
             "ffn.fc": "ffn_up", "ffn.proj": "ffn_down"}
    for i in range(c.n_layers):
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                out[f"blk.{i}.{theirs}.{p}"] = sd[f"blocks.{i}.{ours}.{p}"]
    return out


def write_gguf(model, path: pathlib.Path) -> pathlib.Path:
    """kvgpt's weights as an F32 GGUF for llama.cpp's gpt2 architecture (keys and names: module docstring)."""
    import gguf

    c = model.config
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_name("kvgpt")
    writer.add_context_length(c.block_size)
    writer.add_embedding_length(c.d_model)
    writer.add_feed_forward_length(4 * c.d_model)
    writer.add_block_count(c.n_layers)
    writer.add_head_count(c.n_heads)
    writer.add_layer_norm_eps(1e-5)  # GPT-2's layer_norm_epsilon, kvgpt's config.norm_eps default
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("none")  # ids in, ids out: no vocabulary needed
    writer.add_vocab_size(c.vocab_size)  # "none" + vocab_size -> V dummy tokens (llama-vocab.cpp)
    for name, array in gguf_tensors(model).items():
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def load(path: pathlib.Path, model, threads: int):
    """llama_cpp.Llama on the GGUF: context = block_size, F32 K/V cache, one batch holds a whole prompt."""
    import llama_cpp

    c = model.config
    return llama_cpp.Llama(model_path=str(path), n_ctx=c.block_size, n_batch=c.block_size, n_ubatch=c.block_size,
                           n_threads=threads, n_threads_batch=threads, logits_all=False, verbose=False,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


class Sequences:
    """B sequences in one llama.cpp context: seq_id b is row b, each with block_size cells of F32 K/V cache.

    B = 1 uses the Llama's own context and batch; B > 1 a context of its own on the same loaded weights
    (n_seq_max = B, n_ctx = B * block_size, not unified: each sequence its own cells).
    """

    def __init__(self, llm, batch_size: int, block_size: int):
        import llama_cpp
        from llama_cpp import _internals

        self.llm, self.b, self.vocab = llm, batch_size, llm.n_vocab()
        if batch_size == 1:
            self.ctx, self.batch = llm._ctx, llm._batch
            return
        params = type(llm.context_params).from_buffer_copy(llm.context_params)  # the same threads, F32 K/V
        params.n_seq_max, params.n_ctx = batch_size, batch_size * block_size
        params.n_batch = params.n_ubatch = batch_size * block_size  # one decode call holds every prompt
        params.kv_unified = False
        if batch_size > llama_cpp.llama_max_parallel_sequences():
            raise ValueError(f"batch_size={batch_size}: llama.cpp runs at most "
                             f"{llama_cpp.llama_max_parallel_sequences()} sequences in one context")
        self.ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=batch_size * block_size, embd=0, n_seq_max=1, verbose=False)

    def clear(self) -> None:
        import llama_cpp

        llama_cpp.llama_memory_clear(self.ctx.memory, True)  # every sequence's cache, data too

    def decode(self, rows: list[list[int]], start: int) -> np.ndarray:
        """Feed rows[b] to sequence b at positions start.. -> logits of each row's last token (B, V) float32."""
        b, n = self.batch.batch, 0
        for seq, ids in enumerate(rows):
            for j, token in enumerate(ids):
                b.token[n], b.pos[n], b.n_seq_id[n], b.seq_id[n][0] = token, start + j, 1, seq
                b.logits[n] = j == len(ids) - 1  # an output row for the last token of each sequence only
                n += 1
        b.n_tokens = n
        self.ctx.decode(self.batch)
        # llama_get_logits: the output rows, contiguous, in the order their tokens appear in the batch
        return np.ctypeslib.as_array(self.ctx.get_logits(), shape=(len(rows), self.vocab)).copy()


def build(model, workdir: pathlib.Path, threads: int) -> Engine:
    """Write the GGUF under `workdir`, load it, and return the greedy engine (any batch size)."""
    llm = load(write_gguf(model, pathlib.Path(workdir) / "kvgpt-f32.gguf"), model, threads)
    block_size, contexts = model.config.block_size, {}

    def sequences(batch_size: int) -> Sequences:
        if batch_size not in contexts:  # built once per batch size, outside the timed region
            contexts[batch_size] = Sequences(llm, batch_size, block_size)
        return contexts[batch_size]

    def run(prompt_ids: torch.Tensor, new_tokens: int) -> Run:
        b, t = prompt_ids.shape
        if new_tokens < 1:
            raise ValueError(f"new_tokens={new_tokens}: must be >= 1 (the first token ends the prefill)")
        if t + new_tokens > block_size:
            raise ValueError(f"prompt length {t} + new_tokens={new_tokens} exceeds block_size={block_size}")
        seqs = sequences(b)
        seqs.clear()
        rows = prompt_ids.tolist()
        start = time.perf_counter()
        steps = [np.argmax(seqs.decode(rows, 0), axis=-1)]  # (B,) the first new token of each row
        first, first_cpu = time.perf_counter(), time.process_time()
        for i in range(new_tokens - 1):
            steps.append(np.argmax(seqs.decode([[int(x)] for x in steps[-1]], t + i), axis=-1))
        last, last_cpu = time.perf_counter(), time.process_time()
        out = torch.from_numpy(np.stack(steps, axis=1).astype(np.int64))  # (B, N)
        return Run(out, _ms(start, first), _ms(first, last), _ms(start, time.perf_counter()), _ms(first_cpu, last_cpu))

    run.sequences = sequences  # for prompt_logits_gap
    return run


def prompt_logits_gap(model, engine, prompt_ids: torch.Tensor) -> float:
    """max |llama.cpp's last-position logits - kvgpt's| after a prefill of prompts (B, T)."""
    seqs = engine.sequences(prompt_ids.size(0))
    seqs.clear()
    with torch.no_grad():
        ours = model(prompt_ids)[:, -1].numpy()  # (B, V)
    return float(np.abs(seqs.decode(prompt_ids.tolist(), 0) - ours).max())


if __name__ == "__main__":
    from _harness import main

    from kvgpt.benchmark.engines import random_prompts

    def extra(model, engine, name, threads, batch):
        prompt = random_prompts(model.config.vocab_size, batch, 16, seed=0)
        return {"prompt_logits_max_abs_diff": prompt_logits_gap(model, engine, prompt)}

    sys.exit(main(sys.modules[__name__], extra=extra))
