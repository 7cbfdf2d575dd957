"""Command line: `kvgpt generate` streams text from a model; `kvgpt bench` / `kvgpt serve-bench` run benchmarks.

    python -m kvgpt generate --prompt "ROMEO:" --max-new-tokens 200 --temperature 0.8 --top-k 40 --seed 0
    python -m kvgpt generate --max-new-tokens 1000 --context-policy slide --window 192   # past the context
    python -m kvgpt generate --model shakespeare-char-llama --max-new-tokens 1000 --context-policy sinks --sinks 4
    python -m kvgpt generate --temperature 0 --draft shakespeare-char-draft --draft-k 4   # speculative

The text (prompt, then each new token as soon as it is chosen) goes to stdout; the one-line summary
(tokens, prefill ms, decode tokens/s; measured after a one-token warm-up forward) goes to stderr, so
`kvgpt generate ... > out.txt` keeps only the text.
A bad argument prints one line `kvgpt: error: ...` and exits with code 2.
Introduced in notebooks/05_decoding.ipynb.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

from .context import DEFAULT_SINKS
from .kv_cache import CACHE_KINDS
from .pretrained import DEFAULT_MODEL, available_models, load_pretrained

EPILOG = ("The generated text goes to stdout, the summary line to stderr. "
          f"Models: {', '.join(available_models())} (GPT-2 needs the network the first time), or a directory.")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line, no usage block: `kvgpt: error: ...`, exit code 2 (argparse's code for bad arguments)."""
        self.exit(2, f"kvgpt: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands generate and bench)."""
    parser = _Parser(prog="kvgpt", description="Generate text with a KV-cached GPT-2-style model.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("bench", add_help=False, help="run the benchmark suite (arguments go to kvgpt.benchmark.suite)")
    sub.add_parser("serve-bench", add_help=False,
                   help="serving benchmarks: static vs continuous batching vs vLLM (kvgpt.benchmark.serve_suite)")
    g = sub.add_parser("generate", help="stream text from a model", epilog=EPILOG)
    g.add_argument("--prompt", default="ROMEO:", help="text to continue (default: %(default)r)")
    g.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default: %(default)s)")
    g.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (default: all)")
    g.add_argument("--top-p", type=float, default=None, help="keep the smallest set with this mass (default: 1)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default: 1)")
    g.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    g.add_argument("--no-cache", action="store_true", help="recompute the whole prefix every step (the baseline)")
    g.add_argument("--cache-kind", choices=CACHE_KINDS, default="static", help="KV cache layout")
    g.add_argument("--compile", nargs="?", const="inductor", default=None, choices=("inductor", "aot"),
                   help="decode steps as one compiled graph: torch.compile (inductor, the default) or AOTInductor "
                        "(aot); static cache; the first step compiles (seconds)")
    g.add_argument("--threads", default="auto",
                   help="torch threads; auto: 1 for a model under 16 MiB, else every core (default: auto)")
    g.add_argument("--linear-backend", choices=("auto", "mkl", "onednn"), default="auto",
                   help="matrix products on MKL or oneDNN; auto: oneDNN where MKL has no fast path (default: auto)")
    g.add_argument("--context-policy", choices=("refuse", "slide", "sinks"), default="refuse",
                   help="past the model's context: refuse, slide (keep the last --window tokens, re-prefill) or "
                        "sinks (RoPE models: keep the first --sinks and the last --window, no re-prefill; "
                        "default: refuse)")
    g.add_argument("--window", type=int, default=None,
                   help="tokens a slide keeps (default: half the context) or sinks keep (default: context - sinks)")
    g.add_argument("--sinks", type=int, default=None,
                   help=f"with --context-policy sinks: first tokens kept (default: {DEFAULT_SINKS})")
    g.add_argument("--draft", default=None,
                   help="speculative decoding: 'ngram' (prompt lookup) or a draft model name/directory (default: off)")
    g.add_argument("--draft-k", type=int, default=4, help="draft tokens per target pass (default: %(default)s)")
    g.add_argument("--model", default=DEFAULT_MODEL, help="model name or directory (default: %(default)s)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, mps (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `kvgpt` and `python -m kvgpt`. Returns 0; bad arguments raise SystemExit(2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv and argv[0] in ("bench", "serve-bench"):  # the rest belongs to the suite's own parser
        return _bench(parser, argv[1:], argv[0])
    args = parser.parse_args(argv)
    return _generate(parser, args)


def _bench(parser: argparse.ArgumentParser, argv: list[str], command: str = "bench") -> int:
    module = "suite" if command == "bench" else "serve_suite"
    try:
        from importlib import import_module

        suite_main = import_module(f".benchmark.{module}", __package__).main
    except ImportError as e:
        parser.exit(1, f"kvgpt: error: the benchmark suite kvgpt.benchmark.{module} is not available ({e})\n")
    return suite_main(argv) or 0


def _flag(flag: str, check, *values):
    """check(*values), with a refusal's message prefixed by the flag the user typed."""
    try:
        return check(*values)
    except ValueError as e:
        raise ValueError(f"{flag}: {e}") from None


def _int_flag(value: str) -> int:
    """A --threads value: "auto" or a positive int."""
    from .validation import check_positive_int

    try:
        return check_positive_int("threads", int(value))
    except ValueError:
        raise ValueError(f"threads={value!r}: must be 'auto' or a positive integer") from None


def _setup(args):
    """Everything that can fail because of an argument, all before any output:
    -> (tokenizer, generator, token stream, first token or None)."""
    import torch

    from .generation import AutoregressiveGenerator
    from .sampling import Sampler, check_knob
    from .validation import check_device, check_path, check_seed

    for flag, knob in (("--temperature", "temperature"), ("--top-k", "top_k"), ("--top-p", "top_p"),
                       ("--repetition-penalty", "repetition_penalty")):
        _flag(flag, check_knob, knob, getattr(args, knob))  # each refusal names its flag
    _flag("--seed", check_seed, "seed", args.seed)  # 0 .. 2**64 - 1: torch.Generator's range
    sampler = Sampler(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                      repetition_penalty=args.repetition_penalty, seed=args.seed)
    device = _flag("--device", check_device, "device", args.device)  # computes on it: "meta" or "cuda" here fail
    model, tokenizer = load_pretrained(_flag("--model", check_path, "name", args.model), device=device)
    from .linear import recommended_threads, set_linear_backend

    threads = None if args.threads == "auto" else _flag("--threads", _int_flag, args.threads)

    if str(next(model.parameters()).dtype) == "torch.float32" and device.type == "cpu":
        _flag("--linear-backend", set_linear_backend, model, args.linear_backend)
    elif args.linear_backend == "onednn":
        raise ValueError("--linear-backend onednn: packs fp32 CPU weights only")
    torch.set_num_threads(threads or recommended_threads(model))
    prompt = _flag("--prompt", tokenizer.encode, args.prompt)
    if not prompt:
        raise ValueError("--prompt is empty: generation needs at least one token")
    if args.draft is not None and args.compile is not None:
        raise ValueError("--compile: the speculative generator (--draft) runs eager steps only")
    if args.draft is not None:
        generator, stream = _speculative(args, model, prompt, sampler, tokenizer, device)
    else:
        generator = AutoregressiveGenerator(model, context_policy=args.context_policy, window=args.window,
                                            compile=args.compile or False, sinks=args.sinks)
        stream = generator.stream(prompt, args.max_new_tokens, sampler, use_cache=not args.no_cache,
                                  cache_kind=args.cache_kind, eos_token_id=tokenizer.eos_token_id)
    with torch.inference_mode():  # warm-up: torch's one-off first-call costs would otherwise count as prefill
        model(torch.tensor([prompt[:1]], device=device))
    first = next(stream, None)  # the prefill and the first draw run before anything is printed
    return tokenizer, generator, stream, first


def _speculative(args, model, prompt, sampler, tokenizer, device):
    """--draft: a SpeculativeGenerator over the target and 'ngram' or a draft model -> (generator, stream)."""
    from .speculative import SpeculativeGenerator

    if args.context_policy != "refuse" or args.no_cache:
        raise ValueError("--draft works with the KV cache and --context-policy refuse only")
    draft = "ngram" if args.draft == "ngram" else load_pretrained(args.draft, device=device)[0]
    generator = SpeculativeGenerator(model, draft)
    eos = tokenizer.eos_token_id
    return generator, generator.stream(prompt, args.max_new_tokens, args.draft_k, sampler,
                                       eos_token_id=eos[0] if isinstance(eos, (list, tuple)) else eos,
                                       cache_kind=args.cache_kind)


def _generate(parser: argparse.ArgumentParser, args) -> int:
    try:
        tokenizer, generator, stream, first = _setup(args)
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as e:  # bad argument, model, file, extra
        parser.error(" ".join(str(e).split()))
    except KeyboardInterrupt:  # during loading or the prefill: nothing printed yet
        return 130
    out = _TextStream(tokenizer)
    interrupted = False
    try:
        sys.stdout.write(args.prompt)
        for token in itertools.chain([] if first is None else [first], stream):
            sys.stdout.write(out.push(token))
            sys.stdout.flush()
        sys.stdout.write(out.finish() + "\n")
        sys.stdout.flush()
    except KeyboardInterrupt:
        interrupted = True
        stream.close()
        sys.stdout.write("\n")
    except BrokenPipeError:  # `kvgpt generate | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 -- a failure after output started: still one line, never a traceback
        sys.stdout.write("\n")
        sys.stdout.flush()
        parser.error(f"generation failed after {len(out.ids)} tokens: {type(e).__name__}: {' '.join(str(e).split())}")
    compiled = getattr(generator, "compiled", None)
    args.compile_s = compiled.compile_s if compiled is not None else {}
    print(summary(generator.last_stats, args, interrupted), file=sys.stderr, flush=True)
    return 130 if interrupted else 0


def summary(stats, args, interrupted: bool = False) -> str:
    """The closing line: new tokens, prefill time, decode throughput, cache mode (or the speculative counts)."""
    cache = "no cache" if args.no_cache else f"{args.cache_kind} cache"
    stop = " (interrupted)" if interrupted else ""
    if hasattr(stats, "acceptance_rate"):  # a SpeculativeStats
        per_s = stats.new_tokens / (stats.total_ms / 1e3) if stats.total_ms else 0.0
        return (f"[kvgpt] {stats.new_tokens} new tokens after {stats.prompt_length} prompt tokens{stop} | "
                f"speculative, {args.draft} k={stats.k}: acceptance {stats.acceptance_rate:.2f}, "
                f"{stats.tokens_per_target_pass:.2f} tokens per target pass | {per_s:.1f} tokens/s | "
                f"{cache} | {args.model} on {args.device}")
    if args.context_policy == "slide":
        cache += f", slide window {args.window or 'block_size // 2'}: {stats.slides} slides"
    if args.context_policy == "sinks":
        sinks = DEFAULT_SINKS if args.sinks is None else args.sinks
        cache += f", {sinks} sinks + window {args.window or 'the rest'}: {stats.slides} evicting steps"
    return (f"[kvgpt] {stats.n_new_tokens} new tokens after {stats.n_prompt_tokens} prompt tokens{stop} | "
            f"prefill {stats.prefill_ms:.1f} ms | decode {stats.decode_tokens_per_s:.1f} tokens/s | "
            f"{cache}{_compiled(stats, args)} | {args.model} on {args.device}")


def _compiled(stats, args) -> str:
    """", compiled (decode includes 4.1 s compiling)" when --compile compiled a graph during this run."""
    seconds = sum(getattr(args, "compile_s", {}).values())
    if not getattr(args, "compile", None):
        return ""
    return f", compiled ({args.compile}; decode includes {seconds:.1f} s compiling)" if seconds else \
        f", compiled ({args.compile})"


class _TextStream:
    """Turns ids arriving one at a time into text deltas. A BPE token can end inside a multi-byte
    character, so the text is re-decoded from the start and a trailing U+FFFD is held back until complete."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.shown = tokenizer, [], 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        delta, self.shown = text[self.shown:], len(text)
        return delta

    def finish(self) -> str:
        text = self.tokenizer.decode(self.ids)
        delta, self.shown = text[self.shown:], len(text)
        return delta
