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
# llama.cpp: llama-cpp-python has no wheel on PyPI, so pip builds its sdist (cmake + a C/C++ compiler; pip fetches
# cmake and ninja itself). Optional: if it fails the reason goes to $VENV/.llamacpp-failed and the other peers stay.
# LLAMA_BUILD_TIMEOUT (seconds, default 0 = none) bounds the build; .ci/run sets it.
# GGML_NATIVE: compiled for this CPU (-march=native), the way llama.cpp is meant to run; no BLAS, no tests/examples.
# Measured here (2 shared vCPUs, Sapphire Rapids): 21.5 min wall, 13 min CPU. pip caches the built wheel
# (~/.cache/pip/wheels): a reinstall takes seconds (3.2 s, pip install --force-reinstall --no-deps)
# but pip does not key that cache on CMAKE_ARGS: to rebuild with other flags, add --no-cache-dir.
LLAMA_CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_BLAS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"
echo "== llama-cpp-python==0.3.36 from source (~20 min on 2 vCPUs; log: $VENV/llamacpp-build.log)"
if ! command -v c++ > /dev/null 2>&1 && ! command -v g++ > /dev/null 2>&1 && ! command -v clang++ > /dev/null 2>&1; then
    echo "no C++ compiler on PATH (c++, g++ or clang++): llama-cpp-python builds from source" > "$VENV/.llamacpp-failed"
elif ! CMAKE_ARGS="$LLAMA_CMAKE_ARGS" timeout "${LLAMA_BUILD_TIMEOUT:-0}" "$VENV/bin/pip" install -v \
        llama-cpp-python==0.3.36 > "$VENV/llamacpp-build.log" 2>&1; then
    { echo "pip install llama-cpp-python==0.3.36 failed or passed LLAMA_BUILD_TIMEOUT=${LLAMA_BUILD_TIMEOUT:-0} s (0: none)" \
           "(CMAKE_ARGS=$LLAMA_CMAKE_ARGS); the log's last lines:"
      grep -v '^ *\[' "$VENV/llamacpp-build.log" | tail -n 15; } > "$VENV/.llamacpp-failed"
fi
[ -f "$VENV/.llamacpp-failed" ] && echo "peers install: llama.cpp skipped: $(head -n 1 "$VENV/.llamacpp-failed")" >&2
touch "$VENV/.installed"
