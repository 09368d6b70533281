"""Typed settings of `modelserver serve` / `gateway` / `fetch`, parsed from flags with env
fallbacks. The listening side (TLS, keys, allow-list, limits, cache, overflow, logs) is one
flag group with one validation, shared by `serve` and `gateway`.

Every flag `--some-flag` can also come from `MODELSERVER_SOME_FLAG` (the operator renders
either); a flag given on the command line wins over the environment.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from modeldeploy import contract, quantity
from modeldeploy.constants import SERVER_MAX_BODY_BYTES, SERVER_REQUEST_TIMEOUT_SECONDS

ENV_PREFIX = "MODELSERVER_"
# prompt tokens prefilled per scheduler iteration, across all requests prefilling, between
# two decode steps of the running batch (benchmarks/RESULTS.md §11 measures the choice)
DEFAULT_MAX_PREFILL_TOKENS_PER_STEP = 2048
# redis-py's URL schemes (redis.from_url): plain, TLS, and a Unix socket.
REDIS_SCHEMES = ("redis", "rediss", "unix")
COMPILE_MODES = ("off", "on")  # --compile


class ConfigError(ValueError):
    """A setting is missing or contradicts another; the message says which and why."""


@dataclass
class Checksum:
    file: str
    algo: str  # "sha256" | "md5"
    digest: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        # FILE=ALGO:HEX; FILE may itself contain '=' only in odd cases, so split on the last.
        name, sep, rest = text.rpartition("=")
        algo, sep2, digest = rest.partition(":")
        if not sep or not sep2 or not name:
            raise ConfigError(f"--checksum {text!r}: expected FILE=sha256:HEX or FILE=md5:HEX")
        algo = algo.lower()
        if algo not in ("sha256", "md5"):
            raise ConfigError(f"--checksum {text!r}: algorithm must be sha256 or md5")
        digest = digest.strip().lower()
        if not digest or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(f"--checksum {text!r}: digest must be hexadecimal")
        return cls(file=name, algo=algo, digest=digest)


@dataclass(frozen=True)
class ListenerSettings:
    """What every listening mode shares: `serve` and `gateway` take these flags with the
    same names, defaults and validation."""

    host: str = "0.0.0.0"
    port: int = contract.DEFAULT_PORT
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_min_version: str = contract.DEFAULT_TLS_MIN_VERSION
    no_tls: bool = False
    api_keys_file: str | None = None
    no_auth: bool = False
    allow_cidr: list[str] = field(default_factory=list)
    trusted_proxy_cidr: list[str] = field(default_factory=list)
    max_body_bytes: int = SERVER_MAX_BODY_BYTES
    request_timeout: float = float(SERVER_REQUEST_TIMEOUT_SECONDS)
    redact_logs: bool = False
    cache_redis_url: str | None = None
    cache_redis_password_file: str | None = None
    cache_ttl: int = contract.DEFAULT_CACHE_TTL_SECONDS
    overflow_url: str | None = None
    overflow_api_key_file: str | None = None
    overflow_ca_file: str | None = None
    overflow_timeout: float | None = None  # None: --request-timeout
    redact_overflow_requests: bool = False
    log_level: str = "info"

    def validate_listener(self) -> None:
        if self.no_tls and (self.tls_cert or self.tls_key):
            raise ConfigError("--no-tls contradicts --tls-cert/--tls-key: choose one")
        if not self.no_tls and not (self.tls_cert and self.tls_key):
            raise ConfigError(
                "TLS is on by default: give --tls-cert FILE and --tls-key FILE, "
                "or pass --no-tls to serve plain HTTP explicitly"
            )
        if self.no_auth and self.api_keys_file:
            raise ConfigError("--no-auth contradicts --api-keys-file: choose one")
        if not self.no_auth and not self.api_keys_file:
            raise ConfigError(
                "API keys are on by default: give --api-keys-file FILE (one key per line), "
                "or pass --no-auth to serve without authentication explicitly"
            )
        if self.tls_min_version not in contract.TLS_VERSIONS:
            raise ConfigError(f"--tls-min-version {self.tls_min_version!r}: one of "
                              f"{', '.join(contract.TLS_VERSIONS)}")
        for name in ("port", "max_body_bytes", "cache_ttl"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        self._validate_cache()
        self._validate_overflow()
        for flag, cidrs in (("allow-cidr", self.allow_cidr),
                            ("trusted-proxy-cidr", self.trusted_proxy_cidr)):
            for cidr in cidrs:
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise ConfigError(f"--{flag} {cidr!r}: not a CIDR such as 10.0.0.0/8 "
                                      "or fd00::/8") from None

    def _validate_cache(self) -> None:
        if self.cache_redis_password_file and not self.cache_redis_url:
            raise ConfigError("--cache-redis-password-file needs --cache-redis-url")
        if self.cache_redis_url:
            url = urlsplit(self.cache_redis_url)
            if url.scheme not in REDIS_SCHEMES or not (url.hostname or url.path):
                raise ConfigError(f"--cache-redis-url {self.cache_redis_url!r}: a "
                                  f"{', '.join(s + '://' for s in REDIS_SCHEMES)} URL such "
                                  "as redis://10.0.0.5:6379/0")

    def _validate_overflow(self) -> None:
        for flag, value in (("overflow-api-key-file", self.overflow_api_key_file),
                            ("overflow-ca-file", self.overflow_ca_file),
                            ("overflow-timeout", self.overflow_timeout),
                            ("redact-overflow-requests", self.redact_overflow_requests)):
            if value and not self.overflow_url:
                raise ConfigError(f"--{flag} needs --overflow-url")
        if self.overflow_url:
            url = urlsplit(self.overflow_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ConfigError(f"--overflow-url {self.overflow_url!r}: an http:// or "
                                  "https:// OpenAI base URL such as https://host:8080/v1")
            if self.overflow_ca_file and url.scheme != "https":
                raise ConfigError("--overflow-ca-file needs an https:// --overflow-url")
        if self.overflow_timeout is not None and self.overflow_timeout <= 0:
            raise ConfigError("--overflow-timeout must be above 0 seconds")

    def check_files(self) -> None:
        """Files read once at start (a password, a CA) are checked before serving, so a
        missing mount stops the server naming the flag, not the first request; validate()
        judges the flags alone, with no I/O."""
        for flag, path in (("cache-redis-password-file", self.cache_redis_password_file),
                           ("overflow-ca-file", self.overflow_ca_file)):
            if path and not os.access(path, os.R_OK):
                raise ConfigError(f"--{flag} {path!r}: no such readable file")

    @property
    def overflow_timeout_seconds(self) -> float:
        """How long the upstream may take: --overflow-timeout, else --request-timeout."""
        return self.overflow_timeout if self.overflow_timeout is not None \
            else self.request_timeout


@dataclass(frozen=True)
class Settings(contract.EngineOptions, ListenerSettings):
    """`modelserver serve`: the listener's settings, the engine's, and the model's."""

    model: str = ""
    revision: str | None = None
    served_name: str | None = None
    context_window: int | None = None
    default_max_tokens: int = contract.SERVER_MAX_TOKENS
    default_temperature: float = contract.SERVER_TEMPERATURE
    default_top_p: float = contract.SERVER_TOP_P
    tool_call_parser: str = contract.DEFAULT_BUILTIN_TOOL_CALL_PARSER
    model_cache_dir: str | None = None
    checksum: list[Checksum] = field(default_factory=list)
    device: str = "auto"
    warmup: bool = True
    prefix_cache_entries: int = 8
    # KV budget (engine/budget.py): `auto` decides from the memory free after loading
    kv_cache_memory: str = "auto"
    prefix_cache_memory: str = "auto"  # auto: all the KV budget the batch leaves
    max_prefill_tokens_per_step: int = DEFAULT_MAX_PREFILL_TOKENS_PER_STEP
    # on: torch.compile the decode forward over static shapes (engine/slots.py); on CUDA
    # with CUDA graphs. Off by default: compiling costs seconds per shape at start
    compile: str = "off"

    @property
    def kv_cache_bytes(self) -> int | None:
        return parse_size(self.kv_cache_memory, "kv-cache-memory")

    @property
    def prefix_cache_bytes(self) -> int | None:
        return parse_size(self.prefix_cache_memory, "prefix-cache-memory")

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("--model is required (local dir, .gguf file, hf://org/name, https://…)")
        self.validate_listener()
        for flag, value, supported in (
            ("dtype", self.dtype, contract.DTYPES),
            ("quantization", self.quantization, contract.QUANTIZATIONS_BY_ENGINE["builtin"]),
            ("tool-call-parser", self.tool_call_parser, contract.BUILTIN_TOOL_CALL_PARSERS),
            ("compile", self.compile, COMPILE_MODES),
        ):
            if value not in supported:
                raise ConfigError(f"--{flag} {value!r}: one of {', '.join(supported)}")
        for name in ("max_batch_size", "max_concurrent_requests"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_prefill_tokens_per_step < 1:
            raise ConfigError(f"--max-prefill-tokens-per-step {self.max_prefill_tokens_per_step}: "
                              "must be at least 1 (prompt tokens per scheduler iteration)")
        if self.prefix_cache_entries < 0:
            raise ConfigError("--prefix-cache-entries must be at least 0 (0: no prefix cache)")
        kv, prefix = self.kv_cache_bytes, self.prefix_cache_bytes
        if kv is not None and prefix is not None and prefix > kv:
            raise ConfigError(f"--prefix-cache-memory {self.prefix_cache_memory} must not "
                              f"exceed --kv-cache-memory {self.kv_cache_memory}: the prefix "
                              "cache lives in the KV budget")
        if (
            self.max_input_tokens
            and self.max_total_tokens
            and self.max_input_tokens >= self.max_total_tokens
        ):
            raise ConfigError(
                f"--max-input-tokens ({self.max_input_tokens}) must be below "
                f"--max-total-tokens ({self.max_total_tokens})"
            )


@dataclass(frozen=True)
class GatewaySettings(ListenerSettings):
    """`modelserver gateway`: the listener's settings in front of an engine (vLLM, TGI)
    that listens on loopback without TLS or keys."""

    upstream: str = ""
    max_concurrent_requests: int = contract.DEFAULT_MAX_CONCURRENT_REQUESTS

    def validate(self) -> None:
        if not self.upstream:
            raise ConfigError("--upstream is required: the engine's URL, e.g. "
                              "http://127.0.0.1:8001")
        url = urlsplit(self.upstream)
        if url.scheme != "http" or not url.hostname or url.query or url.fragment:
            raise ConfigError(f"--upstream {self.upstream!r}: an http:// URL such as "
                              "http://127.0.0.1:8001 (the engine listens on loopback, "
                              "without TLS)")
        self.validate_listener()
        if self.max_concurrent_requests < 1:
            raise ConfigError("--max-concurrent-requests must be at least 1")


def parse_size(text: str, flag: str) -> int | None:
    """`auto` → None; a size (`2Gi`, `512Mi`, `1G`, bytes) → bytes; else a ConfigError
    naming `--flag`."""
    if text.strip().lower() == "auto":
        return None
    value = quantity.parse(text.strip())
    if value is None or value < 1 or value != int(value):
        raise ConfigError(f"--{flag} {text!r}: `auto` or a size such as 2Gi, 512Mi or a "
                          "byte count")
    return int(value)


def _env(flag: str) -> str | None:
    return os.environ.get(ENV_PREFIX + flag.upper().replace("-", "_"))


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _add(p: argparse.ArgumentParser, flag: str, kind=str, help: str = "", **kw) -> None:
    """Add `--flag` whose default comes from MODELSERVER_FLAG when set."""
    env = _env(flag)
    action = kw.get("action")
    if action == "store_true":
        kw["default"] = _truthy(env) if env is not None else False
        p.add_argument(f"--{flag}", help=help, **kw)
        return
    if action == "append":
        # env form: comma- or newline-separated list
        kw["default"] = None
        p.add_argument(f"--{flag}", type=kind, help=help, **kw)
        p.set_defaults(**{f"_env_{flag}": env})
        return
    if env is not None:
        kw["default"] = kind(env)
    p.add_argument(f"--{flag}", type=kind, help=help, **kw)


def _common_model_flags(p: argparse.ArgumentParser) -> None:
    _add(p, "model", help="local dir | file.gguf | hf://org/name[@rev] | https://… | file:///…")
    _add(p, "revision", help="hub revision (branch, tag or commit)")
    _add(p, "model-cache-dir", help="where downloads are kept")
    _add(p, "checksum", action="append",
         help="FILE=sha256:HEX or FILE=md5:HEX, verified before loading (repeatable)")


def _listener_flags(p: argparse.ArgumentParser) -> None:
    """The flags `serve` and `gateway` share: one definition, so both read the same."""
    d = ListenerSettings()
    _add(p, "host", default=d.host)
    _add(p, "port", int, default=d.port)
    _add(p, "max-concurrent-requests", int, default=contract.DEFAULT_MAX_CONCURRENT_REQUESTS,
         help="in flight (queued + running); beyond this → 429 (or overflow)")
    _add(p, "tls-cert")
    _add(p, "tls-key")
    _add(p, "tls-min-version", default=d.tls_min_version, help="|".join(contract.TLS_VERSIONS))
    _add(p, "no-tls", action="store_true", help="serve plain HTTP (explicit opt-out)")
    _add(p, "api-keys-file", help="one key per line; reloaded when it changes")
    _add(p, "no-auth", action="store_true", help="no API key check (explicit opt-out)")
    _add(p, "allow-cidr", action="append", help="allowed client network (repeatable)")
    _add(p, "trusted-proxy-cidr", action="append",
         help="reverse proxies (an Ingress controller) whose X-Forwarded-For gives the "
              "client address for --allow-cidr and the access log (repeatable)")
    _add(p, "max-body-bytes", int, default=d.max_body_bytes)
    _add(p, "request-timeout", float, default=d.request_timeout)
    _add(p, "redact-logs", action="store_true", help="mask personal data in all log lines")
    _add(p, "cache-redis-url", help="redis://… response cache for deterministic requests")
    _add(p, "cache-redis-password-file", help="Redis's password (first line), read at start")
    _add(p, "cache-ttl", int, default=d.cache_ttl, help="seconds a cached answer lives")
    _add(p, "overflow-url", help="OpenAI-compatible base URL used when the queue is full")
    _add(p, "overflow-api-key-file", help="the upstream's key (first line), read per request")
    _add(p, "overflow-ca-file", help="CA that signs an https upstream's certificate "
                                     "(instead of the system's)")
    _add(p, "overflow-timeout", float,
         help="seconds the upstream may take before the request gets 429 "
              "(default: --request-timeout)")
    _add(p, "redact-overflow-requests", action="store_true",
         help="mask personal data in the messages sent to the overflow upstream")
    _add(p, "log-level", default=d.log_level)


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: a prefix of a flag is an error, not that flag, so a flag renamed
    # in the operator's renderer cannot keep working by accident (tests/unit/test_contract).
    parser = argparse.ArgumentParser(
        prog="modelserver", allow_abbrev=False,
        description="OpenAI- and TGI-compatible inference server (torch + transformers)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="load the model and serve HTTP(S)", allow_abbrev=False)
    _common_model_flags(s)
    _listener_flags(s)
    d = Settings()
    _add(s, "served-name", help="model name reported and accepted by the API")
    _add(s, "dtype", default=d.dtype, help="|".join(contract.DTYPES))
    _add(s, "quantization", default=d.quantization,
         help="|".join(contract.QUANTIZATIONS_BY_ENGINE["builtin"]) + " (weight-only int8)")
    _add(s, "device", default=d.device, help="auto|cpu|cuda (auto: device_map over all GPUs)")
    _add(s, "max-batch-size", int, default=d.max_batch_size)
    _add(s, "max-input-tokens", int)
    _add(s, "max-total-tokens", int)
    _add(s, "context-window", int, help="extend the model's window with RoPE scaling if larger")
    _add(s, "default-max-tokens", int, default=d.default_max_tokens)
    _add(s, "default-temperature", float, default=d.default_temperature)
    _add(s, "default-top-p", float, default=d.default_top_p)
    _add(s, "tool-call-parser", default=d.tool_call_parser,
         help="|".join(contract.BUILTIN_TOOL_CALL_PARSERS))
    _add(s, "prefix-cache-entries", int, default=d.prefix_cache_entries,
         help="most prompt prefixes kept for reuse (0: none); --prefix-cache-memory "
              "bounds their bytes")
    _add(s, "kv-cache-memory", default=d.kv_cache_memory,
         help="bytes for all KV cache (batch + prefix cache), e.g. 2Gi; auto: 90%% of the "
              "memory free after loading less a 1 GiB reserve (GPU: free device memory; "
              "CPU: the cgroup limit or MemAvailable, less the RSS)")
    _add(s, "prefix-cache-memory", default=d.prefix_cache_memory,
         help="the most of --kv-cache-memory the prefix cache may hold, e.g. 512Mi; it only "
              "uses what the running batch leaves and yields when a request needs the room; "
              "auto: no bound beyond --kv-cache-memory")
    _add(s, "max-prefill-tokens-per-step", int, default=d.max_prefill_tokens_per_step,
         help="prompt tokens prefilled per scheduler iteration, across all arriving "
              "requests, between two decode steps of the running batch (smaller: "
              "smoother streams during a burst, slower first tokens)")
    _add(s, "compile", default=d.compile,
         help="|".join(COMPILE_MODES) + ": torch.compile the decode step over static shapes "
              "(batch buckets, the slab's full width; CUDA: mode reduce-overhead, unmeasured)")
    _add(s, "no-warmup", action="store_true", help=argparse.SUPPRESS)

    g = sub.add_parser("gateway", allow_abbrev=False,
                       help="TLS, API keys, allow-list, cache, overflow and metrics in front "
                            "of an engine (vLLM, TGI) on loopback")
    _add(g, "upstream", help="the engine's http:// URL, e.g. http://127.0.0.1:8001 (required)")
    _listener_flags(g)

    f = sub.add_parser("fetch", allow_abbrev=False,
                       help="download and verify a model into a cache dir, then exit")
    _common_model_flags(f)
    f.add_argument("--cache-dir", default=_env("cache-dir"), help="same as --model-cache-dir")
    return parser


def _list_value(ns: argparse.Namespace, flag: str) -> list[str]:
    given = getattr(ns, flag.replace("-", "_"), None)
    if given:
        return list(given)
    env = getattr(ns, f"_env_{flag}", None)
    if not env:
        return []
    return [v.strip() for v in env.replace("\n", ",").split(",") if v.strip()]


def settings_from_args(argv: Sequence[str] | None = None,
                       ) -> tuple[str, Settings | GatewaySettings]:
    ns = build_parser().parse_args(argv)
    kind = GatewaySettings if ns.command == "gateway" else Settings
    names = {f.name for f in fields(kind)}
    values: dict[str, Any] = {}
    for key, value in vars(ns).items():
        if key.startswith("_") or key in ("command", "checksum", "allow_cidr",
                                          "trusted_proxy_cidr", "cache_dir"):
            continue
        if key == "no_warmup":
            values["warmup"] = not value
        elif value is not None and key in names:
            values[key] = value
    if ns.command == "fetch" and ns.cache_dir:
        values["model_cache_dir"] = ns.cache_dir
    if ns.command != "gateway":
        values["checksum"] = [Checksum.parse(c) for c in _list_value(ns, "checksum")]
    if ns.command in ("serve", "gateway"):
        values["allow_cidr"] = _list_value(ns, "allow-cidr")
        values["trusted_proxy_cidr"] = _list_value(ns, "trusted-proxy-cidr")
    return ns.command, kind(**values)
