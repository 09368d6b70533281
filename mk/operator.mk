# Operator targets (included by the top-level Makefile; VENV and PY come from there).
CRD_FILE := crds/modeldeploy.io_modeldeployments.yaml

.PHONY: crd crd-check operator-lint operator-unit operator-e2e operator-run

crd: ## regenerate crds/ from operator/modeldeploy/crd.py
	$(PY) -m modeldeploy crd > $(CRD_FILE)

crd-check: ## fail when crds/ differs from `modeldeploy crd`
	@$(PY) -m modeldeploy crd | diff -u $(CRD_FILE) - && echo "crds/ is up to date"

operator-lint:
	$(VENV)/bin/ruff check operator tests/unit tests/e2e

operator-unit:
	$(PY) -m pytest -m unit tests/unit -k operator -q

operator-e2e:
	$(PY) -m pytest -m e2e tests/e2e -k operator -q

operator-run: ## run the operator against the local cluster, all namespaces
	KUBECONFIG=$(CURDIR)/.cache/cluster/kubeconfig $(PY) -m modeldeploy run --all-namespaces
