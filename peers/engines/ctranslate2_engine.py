"""CTranslate2 peer: its transformers converter on kvgpt's to_hf() weights, float32, greedy, exactly N tokens.

    PYTHONPATH=$PWD .venv-peers/bin/python peers/engines/ctranslate2_engine.py [--quick]

build: kvgpt.hf.to_hf(model).save_pretrained(workdir/"hf"), then ctranslate2.converters.TransformersConverter
(its GPT2Loader: pre-norm decoder, gelu_new, Conv1D weights transposed) with quantization="float32" into
workdir/"ct2". The converter insists on a tokenizer for the vocabulary and the bos/eos/unk tokens; kvgpt's char model
has none and GPT-2's BPE files are not here, so `SyntheticTokenizer` names id i "<i>" (V tokens, in id order:
CTranslate2 then maps "<i>" to row i of the embedding and the LM head, which is all it needs). Prompts go in as
those strings; token_id comes back per step. end_token=[] (no end token at all: the default is the model's EOS,
which a char model emits like any other id) and max_length=N give exactly N new tokens with no EOS stop and no
min_length suppression that would bend the greedy argmax. Greedy = sampling_topk=1.
Timing: generate_batch with a per-token `callback` (called as each step's tokens exist, B rows per step; a step's
first call stamps it); for B=1 generate_tokens (which streams through a Python thread and a queue) measured the same
(char, 1 thread: 0.623 vs 0.581 ms/token, within noise), so one code path serves every B: STREAM = "callback".
Generator(device="cpu", compute_type="float32", intra_threads=threads, inter_threads=1).
GEMM backend: CTranslate2 picks MKL (packed weights) on a GenuineIntel CPU and oneDNN elsewhere (CT2_USE_MKL
overrides; read once per process). Measured here (1 thread, busy 2-vCPU Intel Xeon, indicative): char B=1 MKL 0.581,
oneDNN 0.542, CT2_USE_EXPERIMENTAL_PACKED_GEMM=1 0.802 (a noisier run); GPT-2-small B=1 MKL 46.4, oneDNN 55.8;
B=8 oneDNN 170 (kvgpt 146 in that run). The module leaves CTranslate2's own choice (what a user gets).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from kvgpt.benchmark.engines import Engine, Run, _ms
from kvgpt.hf import to_hf

NAME = "ctranslate2"
STREAM = "callback"  # "callback" (generate_batch + callback, every B) or "generate_tokens" (B = 1 only)


def available() -> str | None:
    """None when ctranslate2 and transformers import here, else the ImportError text."""
    try:
        import ctranslate2  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return None


def versions() -> dict:
    """Versions that decide tokens and speed, and the CPU."""
    from kvgpt.benchmark.report import cpu_name, package_versions

    out = package_versions("ctranslate2", "transformers", "torch", "kvgpt")
    return {**out, "cpu": cpu_name(), "stream": STREAM}


def token(i: int) -> str:
    """The synthetic vocabulary's name for id i."""
    return f"<{i}>"


class SyntheticTokenizer:
    """What CTranslate2's GPT2Loader reads from a tokenizer: get_vocab() (token -> id) and bos/eos/unk tokens.

    All three special tokens are id 0's name: they must be in the vocabulary (else CTranslate2 adds one and the
    vocabulary outgrows the LM head), and none of them stops or changes a run here (end_token=[], disable_unk off).
    """

    def __init__(self, vocab_size: int):
        self.vocab = {token(i): i for i in range(vocab_size)}
        self.bos_token = self.eos_token = self.unk_token = token(0)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)


def convert(model, workdir: Path) -> Path:
    """kvgpt weights -> transformers directory -> CTranslate2 model directory (float32). Returns the latter."""
    import ctranslate2.converters as converters

    vocab_size = model.config.vocab_size

    class Converter(converters.TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return SyntheticTokenizer(vocab_size)  # instead of AutoTokenizer.from_pretrained (there is none)

    workdir.mkdir(parents=True, exist_ok=True)
    to_hf(model).save_pretrained(workdir / "hf")  # config.json + model.safetensors, exactly kvgpt's weights
    return Path(Converter(str(workdir / "hf")).convert(str(workdir / "ct2"), quantization="float32", force=True))


def build(model, workdir: Path, threads: int, stream: str | None = None) -> Engine:
    """Convert `model` under workdir and return an Engine running CTranslate2's Generator at `threads`."""
    import ctranslate2

    path = convert(model, workdir)
    # inter_threads=1: one generation at a time; intra_threads: the OpenMP threads of that generation's ops
    generator = ctranslate2.Generator(str(path), device="cpu", compute_type="float32", intra_threads=threads,
                                      inter_threads=1)
    return ct2_engine(generator, stream or STREAM)


def ct2_engine(generator, stream: str = "callback") -> Engine:
    """An Engine over a CTranslate2 Generator: greedy, no end token, max_length = N new tokens."""
    options = {"max_length": None, "sampling_topk": 1, "end_token": []}

    def run(prompt_ids: torch.Tensor, new_tokens: int) -> Run:
        b = prompt_ids.size(0)
        prompts = [[token(i) for i in row] for row in prompt_ids.tolist()]
        kwargs = {**options, "max_length": new_tokens}
        times, cpu, ids = [], [], [[] for _ in range(b)]
        start = time.perf_counter()
        if stream == "generate_tokens":
            if b != 1:
                raise ValueError(f"batch_size={b}: generate_tokens streams one prompt here; use stream='callback'")
            for step in generator.generate_tokens(prompts[0], **kwargs):
                times.append(time.perf_counter())
                cpu.append(time.process_time())
                ids[0].append(step.token_id)
        else:
            def on_token(step) -> bool:  # called for each row's token; a step's first call stamps the step
                if step.step == len(times):
                    times.append(time.perf_counter())
                    cpu.append(time.process_time())
                ids[step.batch_id].append(step.token_id)
                return False  # never stop early

            results = generator.generate_batch(prompts, include_prompt_in_result=False, callback=on_token,
                                               **kwargs)
            done = [r.sequences_ids[0] for r in results]
            if done != ids:  # the callback's tokens are the result's tokens, step for step
                raise RuntimeError("ctranslate2: callback tokens differ from generate_batch's result")
        end = time.perf_counter()
        tokens = torch.tensor(ids, dtype=torch.long).reshape(b, -1)  # (B, N)
        first, last = (times[0], times[-1]) if times else (None, None)
        cpu_ms = _ms(cpu[0], cpu[-1]) if cpu else float("nan")
        return Run(tokens, _ms(start, first), _ms(first, last), _ms(start, end), cpu_ms)

    return run


if __name__ == "__main__":
    import sys

    import _harness

    sys.exit(_harness.main(sys.modules[__name__]))
