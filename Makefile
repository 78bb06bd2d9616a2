# ppml — two commands from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck protos bench clean browser node-client fuzz

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build of torch (a plain requirement would pull a multi-GB CUDA build)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# crypten's metadata requires sklearn/torchvision; its real needs are in pyproject.toml.
	# Installed last and with --no-deps, so pip's resolver never reports those as conflicts.
	$(PY) -m pip install -q --no-deps crypten==0.4.1
	# compile the fast engine's DCF kernels once (numba, cached in servers/mpc/fast/__pycache__)
	$(PY) -c "from ppml.servers.mpc.fast import dcf; dcf.warm()"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ppml.client.demo

test: $(STAMP) typecheck browser node-client
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# the Node.js example client (tests/integration/test_node_client.py is skipped without node)
NODE_CLIENT := examples/node-client
node-client:
	@if command -v node >/dev/null && command -v npm >/dev/null; then \
		npm ci --prefix $(NODE_CLIENT) --no-audit --no-fund; \
	else \
		echo "node/npm not found: skipping $(NODE_CLIENT) (its tests will be skipped)"; \
	fi

# The RPC boundary fuzz test with its full budget: FUZZ_EXAMPLES per family, 11 families
# (over 15,000 calls); prints the calls sent per family and the status histogram.
# `make test` runs it short and derandomised.
FUZZ_EXAMPLES ?= 1500
fuzz: $(STAMP)
	PPML_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q --timeout=3600 tests/integration/test_fuzz_rpc.py

# headless Chromium for tests/e2e (the dashboard in a real browser); Debian/Ubuntu.
# apt waits up to APT_LOCK_WAIT_S for another apt/dpkg process to release its lock.
APT_LOCK_WAIT_S ?= 600
browser:
	@command -v chromium >/dev/null || (apt-get -o DPkg::Lock::Timeout=$(APT_LOCK_WAIT_S) update \
		&& apt-get -o DPkg::Lock::Timeout=$(APT_LOCK_WAIT_S) install -y chromium)

lint: $(STAMP)
	$(PY) -m ruff check .

# mypy cannot follow setuptools' editable finder, so it checks the package
# through a tree of symlinks that mirrors the ppml.* namespace.
TYPECHECK := build/typecheck
typecheck: $(STAMP)
	@mkdir -p $(TYPECHECK)/ppml
	@for d in client proto servers training dashboard; do ln -sfn ../../../$$d $(TYPECHECK)/ppml/$$d; done
	@ln -sfn ../../../proto/ppml/v1 $(TYPECHECK)/ppml/v1
	cd $(TYPECHECK) && MYPYPATH=. ../../$(PY) -m mypy --config-file ../../pyproject.toml \
		-p ppml.client -p ppml.proto -p ppml.servers -p ppml.training -p ppml.dashboard

protos: $(STAMP)
	$(PY) -m ppml.proto.generate

bench: $(STAMP)
	$(PY) bench/network_a.py

clean:
	rm -rf $(VENV) build *.egg-info $(NODE_CLIENT)/node_modules
