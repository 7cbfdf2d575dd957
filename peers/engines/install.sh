#!/usr/bin/env bash
# Build .venv-peers: the CPU engines kvgpt is measured against (ONNX Runtime, CTranslate2, LLMs-from-scratch,
# llama.cpp through llama-cpp-python), each beside kvgpt and transformers so one process times them side by side.
# Usage: bash peers/engines/install.sh [VENV_DIR]   (default .venv-peers). Writes VENV_DIR/.installed on success or
# VENV_DIR/.failed naming the step that failed (the Makefile then prints it and goes on). llama.cpp is built from
# source (no wheel on PyPI); if that build fails its reason goes to VENV_DIR/.llamacpp-failed and the others stay.
set -u
VENV="${1:-.venv-peers}"
PYTHON="${PYTHON:-python3}"
step() { echo "== $*"; "$@" || { echo "step failed: $*" > "$VENV/.failed"; echo "peers install: step failed: $*" >&2; exit 1; }; }
"$PYTHON" -m venv "$VENV" || { echo "peers install: $PYTHON -m venv failed" >&2; exit 1; }
rm -f "$VENV/.failed" "$VENV/.llamacpp-failed"
step "$VENV/bin/pip" install -q --upgrade pip
step "$VENV/bin/pip" install -q torch==2.13.0
step "$VENV/bin/pip" install -q "transformers==5.23.0" pandas onnx onnxscript onnxruntime ctranslate2 gguf
# LLMs-from-scratch's wheel requires tensorflow and numpy<2.1 for its other chapters; its KV-cache GPT needs torch only
step "$VENV/bin/pip" install -q --no-deps llms-from-scratch==1.0.19
step "$VENV/bin/pip" install -q --no-deps -e .
touch "$VENV/.installed"
