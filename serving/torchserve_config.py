"""TorchServe's config.properties, one renderer for local serving and for hosts.

Management and metrics never listen beyond the addresses given (the callers
pass 127.0.0.1); token authorisation is off because the app cannot send
headers, so access control lives in the network and the URL.
"""

from __future__ import annotations

from collections.abc import Mapping

from serving.settings import ServingSettings


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
