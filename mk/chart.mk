# The Helm chart (included by the top-level Makefile).
CHART_DIR := charts/modeldeploy
HELM = $(shell source hack/versions.sh && echo $$HELM_BIN/helm)
KUBE_VERSION_PIN = $(shell source hack/versions.sh && echo $$KUBE_VERSION)

.PHONY: chart chart-crds

chart: binaries ## helm lint + helm template of charts/modeldeploy (and check its CRD copy)
	@diff -q crds/ $(CHART_DIR)/crds/ >/dev/null || { echo "charts/modeldeploy/crds differs from crds/: run 'make chart-crds'"; exit 1; }
	$(HELM) lint --strict $(CHART_DIR)
	$(HELM) template modeldeploy $(CHART_DIR) --namespace modeldeploy-system \
	  --kube-version $(KUBE_VERSION_PIN) >/dev/null
	@echo ">> chart OK (lint clean, renders)"

chart-crds: ## copy crds/ into the chart (the chart ships the CRDs from there)
	@rm -rf $(CHART_DIR)/crds && mkdir -p $(CHART_DIR)/crds
	cp crds/*.yaml $(CHART_DIR)/crds/
