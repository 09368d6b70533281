"""`modeldeploy run | crd | render | clawdbot-config NAME`."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import sys
from typing import Any

import yaml

from modeldeploy import __version__

# The routes `clawdbot-config --via` can point a client at (spec.Spec.url_via).
VIA = ("ingress", "service")


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modeldeploy", description=__doc__)
    p.add_argument("--version", action="version", version=f"modeldeploy {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true",
                       help="watch every namespace (the default without --namespace)")
    run.add_argument("--operator-namespace", default=None,
                     help="where the CA Secret and the leader Lease live "
                          "(default: $MODELDEPLOY_NAMESPACE, the pod's namespace, 'default')")
    run.add_argument("--resync-seconds", type=float,
                     default=_env_float("MODELDEPLOY_RESYNC_SECONDS", 60.0),
                     help="reconcile every resource at least this often (drift repair)")
    run.add_argument("--workers", type=int, default=4, help="parallel reconciles")
    run.add_argument("--metrics-port", type=int, default=0,
                     help="serve Prometheus metrics on this port (0: off)")
    run.add_argument("--metrics-api-port", type=int, default=0,
                     help="serve custom.metrics.k8s.io/v1beta2 (the HPA's LLM gauges, read "
                          "from the model pods' /metrics) over HTTPS on this port; needs "
                          "the APIService v1beta2.custom.metrics.k8s.io routed to this "
                          "operator (chart: metricsApi.enabled). 0: off")
    run.add_argument("--metrics-api-bind-address", default="0.0.0.0", metavar="ADDRESS",
                     help="address the metrics API listens on (default: every interface)")
    run.add_argument("--health-port", type=int, default=0,
                     help="serve the liveness probe on http://0.0.0.0:PORT/healthz (0: off)")
    run.add_argument("--leader-election", action="store_true",
                     help="only the holder of a Lease reconciles (for >1 replica)")
    run.add_argument("--lease-name", default="modeldeploy-operator")
    run.add_argument("--lease-seconds", type=float, default=15.0)
    run.add_argument("--priority-tier-namespaces", action="append", default=[],
                     metavar="TIER=NS[,NS...]",
                     help="only these namespaces may use qos.priority TIER (repeatable, "
                          "one per tier); a tier not named stays open to every namespace")
    run.add_argument("--scraper-namespace", action="append", default=[], metavar="NS",
                     help="namespace of the Prometheus that scrapes the model servers: "
                          "every model's NetworkPolicy admits it to the serving port "
                          "(repeatable)")
    run.add_argument("--pod-monitor-label", action="append", default=[],
                     metavar="KEY=VALUE",
                     help="label on every PodMonitor the operator creates, e.g. the one "
                          "your Prometheus' podMonitorSelector matches (repeatable)")
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    run.add_argument("--verbose", "-v", action="store_true")

    sub.add_parser("crd", help="print the CustomResourceDefinition YAML")

    render = sub.add_parser("render", help="print the children a manifest would get "
                            "(offline; keys and certificates are placeholders)")
    render.add_argument("-f", "--filename", required=True, help="ModelDeployment YAML ('-')")
    render.add_argument("--operator-namespace", default="modeldeploy-system")

    from modeldeploy.render.clawdbot import FORMATS as CLIENT_FORMATS

    cc = sub.add_parser("clawdbot-config", help="print a client config with the API key "
                        "filled in, e.g. ~/.clawdbot/clawdbot.json or "
                        "~/.openclaw/openclaw.json")
    cc.add_argument("name")
    cc.add_argument("--namespace", "-n", default=None)
    cc.add_argument("--format", choices=sorted(CLIENT_FORMATS), default="clawdbot",
                    help="clawdbot (Clawdbot 2026.1), openclaw (OpenClaw, its current "
                    "name) or clawbot (the deployment guide's clawbot.json)")
    cc.add_argument("--via", choices=VIA, default=None,
                    help="ingress: the Ingress host (a client on the LAN); service: the "
                    "Service (a client in the cluster). Default: the Ingress when the "
                    "ModelDeployment has one, else the Service")
    return p


def client_url(spec: Any, via: str | None) -> str:
    """The base URL `clawdbot-config --via` points the client at; SystemExit naming the
    flag when the ModelDeployment has no such route."""
    try:
        return spec.url_via(via)
    except ValueError as exc:
        raise SystemExit(f"--via {via}: {exc} (--via service: the Service, from inside "
                         "the cluster)") from None


def _labels(values: list[str], flag: str) -> dict[str, str]:
    """`KEY=VALUE` items → a label map; SystemExit naming the flag and the item."""
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def metrics_api_flags(port: int, bind_address: str) -> tuple[int, str]:
    """--metrics-api-port/--metrics-api-bind-address, checked; SystemExit naming the flag."""
    import ipaddress

    if not 0 <= port <= 65535:
        raise SystemExit(f"--metrics-api-port {port}: expected 0 (off) to 65535")
    try:
        ipaddress.ip_address(bind_address)
    except ValueError:
        raise SystemExit(f"--metrics-api-bind-address {bind_address!r}: not an IP "
                         "address") from None
    return port, bind_address


def cmd_run(args: argparse.Namespace) -> int:
    import kopf

    from modeldeploy import metrics, tierpolicy
    from modeldeploy.config import CONFIG, default_operator_namespace

    try:
        CONFIG.priority_tier_namespaces = tierpolicy.parse_flag(args.priority_tier_namespaces)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    bad = [n for n in args.scraper_namespace if not tierpolicy.is_namespace_name(n)]
    if bad:
        raise SystemExit(f"--scraper-namespace {bad[0]!r}: not a namespace name")
    CONFIG.scraper_namespaces = tuple(dict.fromkeys(args.scraper_namespace))
    CONFIG.pod_monitor_labels = _labels(args.pod_monitor_label, "--pod-monitor-label")
    CONFIG.namespaces = list(args.namespace)
    CONFIG.all_namespaces = args.all_namespaces or not args.namespace
    CONFIG.operator_namespace = args.operator_namespace or default_operator_namespace()
    CONFIG.resync_seconds = args.resync_seconds
    CONFIG.workers = args.workers
    CONFIG.leader_election = args.leader_election
    CONFIG.lease_name = args.lease_name
    CONFIG.lease_seconds = args.lease_seconds
    CONFIG.metrics_api_port, CONFIG.metrics_api_bind_address = metrics_api_flags(
        args.metrics_api_port, args.metrics_api_bind_address)
    kopf.configure(verbose=args.verbose,
                   log_format=kopf.LogFormat.JSON if args.log_format == "json"
                   else kopf.LogFormat.PLAIN)
    import modeldeploy.handlers  # noqa: F401 - registers the kopf handlers
    from modeldeploy.apihealth import KopfRetryFilter

    for handler in logging.getLogger().handlers:  # kopf.configure's
        handler.addFilter(KopfRetryFilter())

    # One line per HTTP request would drown the operator's own log.
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.verbose:
        # kopf reports every watch event handled; reconcile logs what actually changed.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)

    if args.metrics_port:
        metrics.serve(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    kopf.run(standalone=True, clusterwide=CONFIG.all_namespaces,
             namespaces=CONFIG.namespaces, liveness_endpoint=liveness)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from modeldeploy.pki import KeyPair
    from modeldeploy.render import desired
    from modeldeploy.render.facts import Inputs
    from modeldeploy.spec import parse

    if args.filename == "-":
        text = sys.stdin.read()
    else:
        with open(args.filename) as f:
            text = f.read()
    out = []
    for doc in yaml.safe_load_all(text):
        if not doc or doc.get("kind") != "ModelDeployment":
            continue
        meta = doc["metadata"]
        spec = parse(meta["name"], meta.get("namespace", "default"), "00000000-uid",
                     doc.get("spec") or {})
        fake = KeyPair("<certificate>", "<private key>")
        inputs = Inputs(operator_namespace=args.operator_namespace,
                        api_keys=["<api key>"] * spec.auth.count, tls_leaf=fake,
                        tls_not_after="<not after>", ca_cert_pem="<ca certificate>")
        out += desired(spec, inputs)
    sys.stdout.write(yaml.safe_dump_all(out, sort_keys=False))
    return 0


async def _clawdbot_config(name: str, namespace: str | None, fmt: str,
                           via: str | None = None) -> dict[str, Any]:
    from lightkube import AsyncClient

    from modeldeploy.constants import API_VERSION, KIND
    from modeldeploy.kube import Kube, kind_of
    from modeldeploy.render import clawdbot
    from modeldeploy.spec import parse

    client = AsyncClient()
    ns = namespace or client.namespace
    kube = Kube(client)
    body = await kube.get(kind_of(API_VERSION, KIND), name, ns)
    if body is None:
        raise SystemExit(f"ModelDeployment {ns}/{name} not found")
    spec = parse(name, ns, body["metadata"]["uid"], body.get("spec") or {})
    url = client_url(spec, via)  # before any Secret is read
    key = None
    if spec.auth.enabled and fmt != "clawbot":
        secret = await kube.get(kind_of("v1", "Secret"), spec.api_key_secret_name, ns)
        data = (secret or {}).get("data") or {}
        if data.get("primary"):
            key = base64.b64decode(data["primary"]).decode()
        elif data.get("keys"):
            key = base64.b64decode(data["keys"]).decode().split()[0]
        else:
            raise SystemExit(f"Secret {ns}/{spec.api_key_secret_name} has no API key yet")
    return clawdbot.FORMATS[fmt](spec, key, url)


def cmd_clawdbot_config(args: argparse.Namespace) -> int:
    config = asyncio.run(_clawdbot_config(args.name, args.namespace, args.format, args.via))
    print(json.dumps(config, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "crd":
        from modeldeploy.crd import crd_yaml

        sys.stdout.write(crd_yaml())
        return 0
    if args.command == "run":
        return cmd_run(args)
    if args.command == "render":
        return cmd_render(args)
    if args.command == "clawdbot-config":
        return cmd_clawdbot_config(args)
    return 2
