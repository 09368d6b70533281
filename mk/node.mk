# The real node and the images it runs (included by the top-level Makefile).
# hack/cluster.sh brings the node up with the cluster; these targets are for people.

.PHONY: images node-deps node-status testbed-rules

node-deps: ## Debian packages of the real node and of the image builder (apt, when missing)
	@bash hack/packages.sh node

images: node-deps binaries ## build the images with buildah (cached by input hash); import them into the real node when it runs
	@bash hack/images.sh build
	@if bash hack/node.sh status >/dev/null 2>&1; then bash hack/images.sh import; fi
	@bash hack/images.sh sizes

node-status: ## the real node's processes (containerd, kubelet, kube-proxy)
	@bash hack/node.sh status

testbed-rules: ## the test bed's nftables rules and their packet counters
	@bash hack/testbed.sh rules

# The real-node tests run the images: build them before the suite, where the time shows.
TEST_PREREQS += images
