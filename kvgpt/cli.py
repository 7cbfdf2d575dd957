"""Command line: `kvgpt generate` streams text from a model; `kvgpt bench` / `kvgpt serve-bench` run benchmarks;
`kvgpt serve` answers OpenAI-style HTTP requests (chapter 15); `kvgpt export` writes a Hugging Face folder.

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

from .cache_manager import CACHE_KINDS
from .context import DEFAULT_SINKS
from .pretrained import DEFAULT_MODEL, available_models, load_pretrained
from .tokenizer import TextStream as _TextStream

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
    sub.add_parser("serve", add_help=False,
                   help="an OpenAI-compatible HTTP server on LLMEngine (kvgpt.serving.server; pip install 'kvgpt[serve]')")
    sub.add_parser("export", add_help=False, help="write a model as a Hugging Face folder with its tokenizer (kvgpt.export)")
    g = sub.add_parser("generate", help="stream text from a model", epilog=EPILOG)
    g.add_argument("--prompt", default="ROMEO:", help="text to continue (default: %(default)r)")
    g.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default: %(default)s)")
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default: %(default)s)")
    g.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (default: all)")
    g.add_argument("--top-p", type=float, default=None, help="keep the smallest set with this mass (default: 1)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default: 1)")
    g.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    g.add_argument("--no-cache", action="store_true", help="recompute the whole prefix every step (the baseline)")
    g.add_argument("--cache-kind", choices=CACHE_KINDS, default=None, help="KV cache layout (default: static)")
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
    g.add_argument("--draft-k", type=int, default=None, help="draft tokens per target pass (default: 4)")
    g.add_argument("--model", default=DEFAULT_MODEL, help="model name or directory (default: %(default)s)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, mps (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `kvgpt` and `python -m kvgpt`. Returns 0; bad arguments raise SystemExit(2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv and argv[0] in _DELEGATED:  # the rest belongs to that module's own parser
        return _delegate(parser, argv[1:], argv[0])
    args = parser.parse_args(argv)
    return _generate(parser, args)


_DELEGATED = {"bench": ".benchmark.suite", "serve-bench": ".benchmark.serve_suite", "serve": ".serving.server",
              "export": ".export"}  # subcommand -> the module whose main(argv) parses the rest


def _delegate(parser: argparse.ArgumentParser, argv: list[str], command: str) -> int:
    module = _DELEGATED[command]
    try:
        from importlib import import_module

        command_main = import_module(module, __package__).main
    except ImportError as e:  # an optional extra is missing (kvgpt[serve]: fastapi, uvicorn, prometheus_client)
        hint = "; install the extra: pip install 'kvgpt[serve]'" if command == "serve" else ""
        parser.exit(1, f"kvgpt: error: kvgpt{module} is not available ({e}){hint}\n")
    return command_main(argv) or 0


def _flag(flag: str, check, *values, **kwargs):
    """check(*values), with a refusal's message (a bad value, type or file) prefixed by the flag the user typed."""
    try:
        return check(*values, **kwargs)
    except (ValueError, TypeError, OSError) as e:
        raise ValueError(f"{flag}: {e}") from None


MAX_THREADS = 1024  # torch takes a C int; far more threads than cores only adds waiting


def _int_flag(value: str) -> int:
    """A --threads value: "auto" or an int in 1..MAX_THREADS."""
    from .validation import check_int

    try:
        return check_int("threads", int(value), 1, MAX_THREADS)
    except ValueError:
        raise ValueError(f"threads={value!r}: must be 'auto' or an int in 1..{MAX_THREADS}") from None


def _check_combinations(args, sampler) -> None:
    """A flag that would do nothing is refused, naming it (else a typo'd combination runs as if it were not given);
    then the defaults that depend on other flags are filled in."""
    unused = [("--window", args.window is not None and args.context_policy == "refuse",
               "only --context-policy slide or sinks keeps a window"),
              ("--sinks", args.sinks is not None and args.context_policy != "sinks", "only --context-policy sinks "
               "keeps sink tokens"),
              ("--draft-k", args.draft_k is not None and args.draft is None, "drafting needs --draft"),
              ("--cache-kind", args.cache_kind is not None and args.no_cache, "--no-cache keeps no KV cache"),
              ("--top-k", args.top_k is not None and args.temperature == 0, "--temperature 0 is greedy"),
              ("--top-p", args.top_p is not None and args.temperature == 0, "--temperature 0 is greedy"),
              ("--seed", args.seed is not None and sampler.is_greedy, "this sampler is greedy: it draws nothing"),
              ("--compile", args.compile is not None and (args.no_cache or args.cache_kind not in (None, "static")),
               "a compiled step decodes from the static KV cache")]
    for flag, would_do_nothing, why in unused:
        if would_do_nothing:
            raise ValueError(f"{flag} would do nothing here: {why}")
    args.cache_kind, args.draft_k = args.cache_kind or "static", 4 if args.draft_k is None else args.draft_k


def _setup(args):
    """Everything that can fail because of an argument, all before any output:
    -> (tokenizer, generator, token stream, first token or None)."""
    import torch

    from .context import check_context_policy, check_sinks
    from .generation import AutoregressiveGenerator
    from .sampling import Sampler, check_knob
    from .validation import check_device, check_path, check_seed

    for flag, knob in (("--temperature", "temperature"), ("--top-k", "top_k"), ("--top-p", "top_p"),
                       ("--repetition-penalty", "repetition_penalty")):
        _flag(flag, check_knob, knob, getattr(args, knob))  # each refusal names its flag
    _flag("--seed", check_seed, "seed", args.seed)  # 0 .. 2**64 - 1: torch.Generator's range
    sampler = Sampler(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                      repetition_penalty=args.repetition_penalty, seed=args.seed)
    _check_combinations(args, sampler)
    device = _flag("--device", check_device, "device", args.device)  # computes on it: "meta" or "cuda" here fail
    model, tokenizer = load_pretrained(_flag("--model", check_path, "name", args.model), device=device)
    from .linear import recommended_threads, set_linear_backend

    threads = None if args.threads == "auto" else _flag("--threads", _int_flag, args.threads)

    if str(next(model.parameters()).dtype) == "torch.float32" and device.type == "cpu":
        _flag("--linear-backend", set_linear_backend, model, args.linear_backend)
    elif args.linear_backend != "auto":
        raise ValueError(f"--linear-backend {args.linear_backend}: chooses the fp32 CPU matrix kernels only")
    torch.set_num_threads(threads or recommended_threads(model))
    prompt = _flag("--prompt", tokenizer.encode, args.prompt)
    if not prompt:
        raise ValueError("--prompt is empty: generation needs at least one token")
    if args.draft is not None and args.compile is not None:
        raise ValueError("--compile: the speculative generator (--draft) runs eager steps only")
    if args.draft is not None:
        generator, stream = _speculative(args, model, prompt, sampler, tokenizer, device)
    else:
        if args.sinks is not None:  # the error names the flag the user typed
            _flag("--sinks", check_sinks, args.sinks, model.config.block_size)
        _flag("--window", check_context_policy, args.context_policy, args.window, model.config.block_size, args.sinks)
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
    from .validation import check_int, check_path

    if args.context_policy != "refuse" or args.no_cache:
        raise ValueError("--draft works with the KV cache and --context-policy refuse only")
    draft = "ngram" if args.draft == "ngram" else _flag("--draft", load_pretrained, _flag(
        "--draft", check_path, "draft", args.draft), device=device)[0]
    _flag("--draft-k", check_int, "k", args.draft_k, 1, model.config.block_size - 1)
    generator = _flag("--draft", SpeculativeGenerator, model, draft)
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
