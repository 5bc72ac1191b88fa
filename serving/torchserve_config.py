"""TorchServe's config.properties, one renderer for local serving and for hosts.

Management and metrics never listen beyond the addresses given (the callers
pass 127.0.0.1); token authorisation is off because the app cannot send
headers, so access control lives in the network and the URL. A model can be
registered from the model store only (`allowed_urls`): nothing remote, no
other file.
"""

from __future__ import annotations

from collections.abc import Mapping

from serving.settings import ServingSettings

# Characters with a meaning in a Java regex, written as a one-character class ("[.]"):
# a backslash would be eaten by java.util.Properties when TorchServe reads the file.
_REGEX_SPECIAL = frozenset(".^$*+?(){}|-")
# What a character class cannot carry plainly, and TorchServe's own separators: "," splits
# allowed_urls into a list, "$$NAME$$" is replaced by an environment variable.
_UNSAFE_IN_PATTERN = frozenset("\\[],\n\r")


def allowed_urls(model_store: str) -> str:
    """TorchServe's `allowed_urls`: the `.mar` files directly in `model_store`, as file:// URLs.

    TorchServe matches a registration URL that looks like a URL (file://, http(s)://)
    against these regexes (case-insensitive, whole string) and refuses it otherwise with
    "does not match any allowed URL(s)"; the default admits any file or web address.
    A bare name (`synthdet.mar`, what deploy and `load_models` use) is not URL-shaped and is
    looked up in the model store itself, unaffected. A bare directory path skips this check
    altogether: the service's sandbox and the firewall answer that one (SECURITY.md).
    """
    store = model_store.rstrip("/")
    if not store.startswith("/") or any(ch in _UNSAFE_IN_PATTERN for ch in store):
        raise ValueError(f"model store {model_store!r} must be an absolute path without []\\, or newlines")
    literal = "".join(f"[{ch}]" if ch in _REGEX_SPECIAL else ch for ch in store)
    return f"file://{literal}/[^/]+[.]mar"


def render_config_properties(
    *,
    inference_address: str,
    management_address: str,
    metrics_address: str,
    model_store: str,
    models: Mapping[str, str],
    serving: ServingSettings,
    workers_per_model: int = 1,
    certificate_file: str | None = None,
    private_key_file: str | None = None,
    enable_model_api: bool = False,
    grpc_ports: tuple[int, int] = (7070, 7071),
) -> str:
    """`models` maps a model name to its .mar file name inside `model_store`."""
    properties: dict[str, str] = {
        "inference_address": inference_address,
        "management_address": management_address,
        "metrics_address": metrics_address,
        # TorchServe always starts gRPC too (it cannot be switched off): keep it
        # on loopback, on ports the caller picks so two servers can coexist.
        "grpc_inference_address": "127.0.0.1",
        "grpc_inference_port": str(grpc_ports[0]),
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": str(grpc_ports[1]),
        "model_store": model_store,
        "allowed_urls": allowed_urls(model_store),
        "load_models": ",".join(f"{name}={archive}" for name, archive in sorted(models.items())),
        "default_workers_per_model": str(serving.workers or workers_per_model),
        "job_queue_size": str(serving.job_queue_size),
        "max_request_size": str(serving.max_request_bytes),
        "max_response_size": str(4 * 1024 * 1024),
        "default_response_timeout": str(serving.response_timeout_s),
        "default_startup_timeout": str(serving.startup_timeout_s),
        # The app sends no Authorization header: the URL secret and nginx guard access.
        "disable_token_authorization": "true",
        "enable_model_api": str(enable_model_api).lower(),
        # Handlers get raw bytes whatever the Content-Type (no JSON/text decoding).
        "decode_input_request": "false",
        "install_py_dep_per_model": "false",
        "enable_envvars_config": "false",
        "vmargs": f"-Xmx{serving.java_heap_mb}m -XX:+ExitOnOutOfMemoryError",
    }
    if certificate_file and private_key_file:
        properties["certificate_file"] = certificate_file
        properties["private_key_file"] = private_key_file
    lines = ["# Written by synthdet-deploy; edits are overwritten."]
    lines += [f"{key}={value}" for key, value in properties.items()]
    return "\n".join(lines) + "\n"


def torchserve_env() -> dict[str, str]:
    """Environment for the TorchServe process (the workers inherit it)."""
    return {
        # Same as decode_input_request=false, for workers started by older frontends.
        "TS_DECODE_INPUT_REQUEST": "false",
        "PYTHONUNBUFFERED": "1",
        # No user site-packages: nothing under a home directory joins the workers' imports.
        "PYTHONNOUSERSITE": "1",
    }
