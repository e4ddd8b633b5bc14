"""What one Ollama systemd unit runs with: its address on the host and its server environment.

Computed here from the plan, never in a template: the role's filter (`gpufleet_ollama_units`)
hands these to templates/ollama.service.j2, which only writes them out.
"""
from __future__ import annotations

from . import engine_args

LISTEN_HOST = "127.0.0.1"
BASE_PORT = 11434  # Ollama's own default; the n-th Ollama service of a host gets BASE_PORT + n

# engine_args -> the Ollama server's environment variable that carries it.
ENVIRONMENT = {
    "context_length": "OLLAMA_CONTEXT_LENGTH",
    "num_parallel": "OLLAMA_NUM_PARALLEL",
    "kv_cache_type": "OLLAMA_KV_CACHE_TYPE",
    "flash_attention": "OLLAMA_FLASH_ATTENTION",
    "keep_alive": "OLLAMA_KEEP_ALIVE",
}
# Ollama quantises the KV cache only with flash attention on; without it, it logs a warning and
# keeps an f16 cache, which is larger than the one the planner sized.
UNQUANTISED_KV = "f16"


class OllamaUnitError(ValueError):
    """The plan asks for an Ollama server that cannot run as planned."""


def listen_addresses(services: list) -> dict:
    """Address of every Ollama service: each host's services, in plan order, on BASE_PORT,
    BASE_PORT + 1, ... so two servers on one host never share a port. `services` are
    (name, host) pairs."""
    per_host: dict = {}
    addresses = {}
    for name, host in services:
        index = per_host[host] = per_host.get(host, -1) + 1
        addresses[name] = f"{LISTEN_HOST}:{BASE_PORT + index}"
    return addresses


def _value(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def environment(service: dict) -> dict:
    """OLLAMA_* variables carrying the service's engine_args (as the plan holds them: every
    argument the planner reads, at the planner's value)."""
    name, args = service["name"], dict(service.get("engine_args") or {})
    missing = [a for a in engine_args.OLLAMA if a not in args]
    if missing:
        raise OllamaUnitError(f"service {name}: the plan lacks engine_args {', '.join(missing)}; "
                              "plan it again with this gpufleet")
    unknown = sorted(set(args) - set(ENVIRONMENT))
    if unknown:
        raise OllamaUnitError(f"service {name}: engine_args {', '.join(unknown)} have no Ollama setting")
    if args["kv_cache_type"] != UNQUANTISED_KV:
        if args.get("flash_attention") is False:
            raise OllamaUnitError(
                f"service {name}: kv_cache_type {args['kv_cache_type']} needs flash attention, and "
                "flash_attention is false: Ollama would keep an f16 KV cache, larger than planned; "
                "remove flash_attention: false or use kv_cache_type: f16")
        args["flash_attention"] = True
    return {ENVIRONMENT[key]: _value(value) for key, value in sorted(args.items())}
