# Two entry points: `make demo` (the sandbox cluster serving real models) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export GPUFLEET_CACHE ?= $(HOME)/.cache/gpufleet
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

.PHONY: venv sandbox-host sandbox-assets sandbox-image sandbox-wheelhouse sandbox-models sandbox-up sandbox-down \
	demo test unit lint molecule soak

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --find-links /opt/wheels -e '.[test]'
	# PyPI's torchvision/torchaudio/torchcodec break vLLM's import beside the CPU torch.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

sandbox-host:            ## podman, runc, debootstrap and podman's runtime settings (root)
	bash sandbox/install-host.sh

# The node image, the wheelhouse and the models do not depend on each other: on a cold machine they
# are built side by side (each one's output is printed when it ends); cached, each takes a second.
# `make demo` skips the wheelhouse's offline test of the install by package names (the ray role's
# fallback when there is no lock: the nodes install from the lock); `make test` runs it.
WHEELHOUSE_FLAGS ?=
export WHEELHOUSE_FLAGS

sandbox-assets: sandbox-host   ## node image, wheelhouse and models, all cached
	@echo "sandbox assets: node image, wheelhouse and models side by side (output of each when it ends)"
	@$(MAKE) --no-print-directory -j3 --output-sync=target sandbox-image sandbox-wheelhouse sandbox-models

sandbox-image:
	bash sandbox/build-image.sh

sandbox-wheelhouse:
	bash sandbox/wheelhouse.sh $(WHEELHOUSE_FLAGS)

sandbox-models: venv
	$(BIN)/python sandbox/models.py

sandbox-up: sandbox-assets
	$(BIN)/ansible-playbook playbooks/sandbox_up.yml

sandbox-down: venv
	$(BIN)/ansible-playbook playbooks/sandbox_down.yml

demo: WHEELHOUSE_FLAGS = --no-verify
demo: sandbox-up
	$(BIN)/gpufleet apply -i inventory/sandbox -s sandbox --yes
	$(BIN)/python -m gpufleet.smoke -i inventory/sandbox

unit: venv
	$(BIN)/pytest -q -m "not sandbox"

# ruff (pyproject.toml [tool.ruff]) and ansible-lint (.config/ansible-lint.yml); both always run.
lint: venv
	@rc=0; $(BIN)/ruff check src plugins tests bench sandbox || rc=1; $(BIN)/ansible-lint || rc=1; exit $$rc

# The three scenarios on one sandbox cluster, removed at the end (sandbox/test-all.sh).
molecule: sandbox-assets
	STAGES="ray_cluster serve ollama" bash sandbox/test-all.sh

# Unit tests, lint, the molecule scenarios, then gpufleet apply/status/diff/rollback on the same
# sandbox cluster (pytest -m sandbox); the cluster is removed at the end even on failure. Stage
# times: runs/test-times.txt.
test: venv sandbox-assets
	bash sandbox/test-all.sh

# Long faults under load on the sandbox that is already up (make sandbox-up or make demo), not part of
# `make test`: a worker stopped and started, the head restarted (tests/test_sandbox_soak.py); ~15 min.
soak: venv
	$(BIN)/pytest -m soak -s tests/test_sandbox_soak.py
