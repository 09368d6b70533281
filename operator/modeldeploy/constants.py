"""Names shared by the CRD, the renderers and the handlers (one place to change them)."""

from __future__ import annotations

from modeldeploy import __version__

GROUP = "modeldeploy.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["md", "mdeploy"]
CRD_NAME = f"{PLURAL}.{GROUP}"

# The bundled inference server (images/server). Its tag follows the operator's version.
DEFAULT_IMAGE = f"ghcr.io/modeldeploy/modelserver:{__version__}"
VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.6"

# The unprivileged user of both images: their Dockerfiles read this number when they
# create the user, and the pods the operator renders run as it (the chart's default
# podSecurityContext too), so a pod never runs as a user its image does not have.
IMAGE_UID = 10001
# How long the bundled server lets one request run (its --request-timeout default), and so
# how long a generated agent config waits for a turn: a long prefill on a slow node sends
# no token for minutes, and OpenClaw's own idle timeout would give up first.
SERVER_REQUEST_TIMEOUT_SECONDS = 600
# The largest request body the bundled server accepts (its --max-body-bytes default), and
# so what a rendered Ingress lets through: Clawdbot's requests are ~40 kB.
SERVER_MAX_BODY_BYTES = 4 * 1024 * 1024

FIELD_MANAGER = "modeldeploy"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "modeldeploy.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "modeldeploy"
COMPONENT = "model-server"

# Annotation with a hash of what was applied: lets a resync skip unchanged children.
ANNOTATION_HASH = "modeldeploy.io/applied-hash"
# On the API key Secret: the auth.apiKeys.rotation value its keys were generated for.
ANNOTATION_ROTATION = "modeldeploy.io/rotation"
# On the operator-issued TLS Secret: its expiry, for people (renewal reads the cert).
ANNOTATION_TLS_NOT_AFTER = "modeldeploy.io/tls-not-after"

CA_SECRET_NAME = "modeldeploy-ca"

# vLLM and TGI listen on this port on 127.0.0.1 only; the bundled image's `modelserver
# gateway`, in the same pod, serves network.port in front of them (TLS, API keys from the
# mounted file, the allow-list) and forwards over loopback. The CRD refuses network.port
# equal to it for those engines: two listeners cannot share one port in one pod.
ENGINE_LOOPBACK_PORT = 8001
# The gateway container's cpu and memory, requests == limits (a Guaranteed pod needs them
# in every container): it only parses HTTP, terminates TLS and relays bytes, but its answer
# cache shares the server's code, which imports torch (modelserver.cache → engine.sampling:
# about 530 MiB resident), so the memory leaves room for that.
GATEWAY_CPU = "500m"
GATEWAY_MEMORY = "1Gi"

# Where the bundled server expects its files (contract with images/server).
TLS_DIR = "/etc/modelserver/tls"
AUTH_DIR = "/etc/modelserver/auth"
# The answer cache's Redis password and the overflow upstream's key and CA, each mounted
# from its own Secret (render/server_features.py).
ANSWER_CACHE_DIR = "/etc/modelserver/answer-cache"
OVERFLOW_KEY_DIR = "/etc/modelserver/overflow-key"
OVERFLOW_CA_DIR = "/etc/modelserver/overflow-ca"
CACHE_DIR = "/var/cache/modelserver"
PVC_MODELS_DIR = "/models"
# $HOME of every engine's container: an emptyDir, since the root filesystem is read-only
# and torch, Triton, vLLM and the Hugging Face libraries write caches under $HOME.
HOME_DIR = "/home/model"

PRIORITY_TIERS: dict[str, int] = {
    "critical": 1_000_000,
    "high": 100_000,
    "normal": 10_000,
    "low": 1_000,
}

# Below this Clawdbot refuses a model outright ("Model context window too small").
CLAWDBOT_MIN_CONTEXT = 16_000
