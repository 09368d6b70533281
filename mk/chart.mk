# Helm chart and container images (included by the top-level Makefile).
CHART_DIR := charts/modeldeploy
HELM = $(shell source hack/versions.sh && echo $$HELM_BIN/helm)
KUBE_VERSION_PIN = $(shell source hack/versions.sh && echo $$KUBE_VERSION)
APP_VERSION = $(shell awk '/^appVersion:/ {gsub(/"/, "", $$2); print $$2}' $(CHART_DIR)/Chart.yaml)
IMAGE_REGISTRY ?= ghcr.io/modeldeploy
# Images are tagged with the appVersion (what the chart and the operator's default server
# image refer to) and with IMAGE_EXTRA_TAG (hack/kind-up.sh loads `dev`).
IMAGE_EXTRA_TAG ?= dev

.PHONY: chart chart-crds images image-operator image-server

chart: binaries ## helm lint + helm template of charts/modeldeploy (and check its CRD copy)
	@diff -q crds/ $(CHART_DIR)/crds/ >/dev/null || { echo "charts/modeldeploy/crds differs from crds/: run 'make chart-crds'"; exit 1; }
	$(HELM) lint --strict $(CHART_DIR)
	$(HELM) template modeldeploy $(CHART_DIR) --namespace modeldeploy-system \
	  --kube-version $(KUBE_VERSION_PIN) >/dev/null
	@echo ">> chart OK (lint clean, renders)"

chart-crds: ## copy crds/ into the chart (the chart ships the CRDs from there)
	@rm -rf $(CHART_DIR)/crds && mkdir -p $(CHART_DIR)/crds
	cp crds/*.yaml $(CHART_DIR)/crds/

images: ## build the operator and server images with Docker (skips when no engine answers)
	@if ! docker info >/dev/null 2>&1; then \
	  echo "skipping: no Docker engine (docker info failed); images not built"; \
	  exit 0; \
	fi; \
	$(MAKE) --no-print-directory image-operator image-server

image-operator:
	docker build -f images/operator/Dockerfile --build-arg VERSION=$(APP_VERSION) \
	  -t $(IMAGE_REGISTRY)/operator:$(APP_VERSION) -t $(IMAGE_REGISTRY)/operator:$(IMAGE_EXTRA_TAG) .

image-server:
	@if [ -f images/server/Dockerfile ]; then \
	  docker build -f images/server/Dockerfile -t $(IMAGE_REGISTRY)/modelserver:$(APP_VERSION) \
	    -t $(IMAGE_REGISTRY)/modelserver:$(IMAGE_EXTRA_TAG) . ; \
	else echo "skipping the server image: images/server/Dockerfile does not exist yet"; fi
