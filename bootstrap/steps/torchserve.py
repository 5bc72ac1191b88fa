"""TorchServe under systemd: config.properties, the unit, and the loaded models.

Restarts happen only when the unit or the (non-model) config changed or the
service is down. A changed, added or removed model is applied through the
management API on 127.0.0.1 (unregister + register of that model only), so
other models keep serving. What TorchServe has loaded is recorded in the
host state; a run that died between upload and reload is finished by the
next one.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from bootstrap import files
from bootstrap.steps.base import (
    CONFIG_FILE,
    GRPC_PORTS,
    INFERENCE_PORT,
    LOG_DIR,
    MANAGEMENT_PORT,
    METRICS_PORT,
    MODEL_STORE,
    SERVICE_USER,
    TS_TMP_DIR,
    UNIT_FILE,
    UNIT_NAME,
    VAR_DIR,
    VENV_DIR,
    DeployError,
    HostState,
    Run,
    ensure_file,
    render_template,
    systemctl_is_active,
    write_state,
)
from bootstrap.steps.firewall import Firewall
from bootstrap.steps.step import Done, Footprint, Step
from bootstrap.steps.upload_model import ModelStore
from bootstrap.steps.venv import Venv
from serving.inputs import sha256_bytes
from serving.polling import poll
from serving.torchserve_config import render_config_properties, torchserve_env

MANAGEMENT_URL = f"http://127.0.0.1:{MANAGEMENT_PORT}"
# TorchServe's frontend jar, inside its Python package.
MAIN_CLASS = "org.pytorch.serve.ModelServer"


@dataclass(frozen=True)
class TorchServe:
    """TorchServe runs under systemd with these models registered (or loading)."""

    models: tuple[str, ...]


# Runs on the host (python3 is there: the venv needs it); prints {"status", "body"}.
_HTTP = r"""
import json, sys, urllib.request, urllib.error
method, url, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
try:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode("utf-8", "replace")}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": e.read().decode("utf-8", "replace")}))
except Exception as e:
    print(json.dumps({"status": 0, "body": repr(e)}))
"""


# One host-side script for a model reload (unregister, then register): if the SSH
# connection drops halfway, the host still finishes both calls, so TorchServe is
# never left without the model. Prints {"status", "body"} of the last call.
_RELOAD = r"""
import json, signal, sys, urllib.request, urllib.error
signal.signal(signal.SIGHUP, signal.SIG_IGN)
delete_url, register_url, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
def call(method, url):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except Exception as e:
        return 0, repr(e)
status, body = (200, "") if delete_url == "-" else call("DELETE", delete_url)
if status in (200, 404):
    status, body = call("POST", register_url)
else:
    body = "unregister failed: " + body
try:
    print(json.dumps({"status": status, "body": body}), flush=True)
except OSError:
    pass  # the connection is gone; the reload itself is done
"""


def render_config(run: Run, model_names: list[str] | tuple[str, ...]) -> str:
    return render_config_properties(
        inference_address=f"http://127.0.0.1:{INFERENCE_PORT}",
        management_address=f"http://127.0.0.1:{MANAGEMENT_PORT}",
        metrics_address=f"http://127.0.0.1:{METRICS_PORT}",
        model_store=MODEL_STORE,
        models={name: f"{name}.mar" for name in model_names},
        serving=run.options.serving,
        workers_per_model=run.workers_per_model,
        # Model (un)registration is how a changed model is reloaded without a
        # restart; the management API listens on loopback, for root only (firewall step).
        enable_model_api=True,
        grpc_ports=GRPC_PORTS,
    )


def ts_home(python_version: str) -> str:
    """Where the venv's site-packages are (`model_server_home`: TorchServe's jars are below)."""
    parts = python_version.split(".")
    if len(parts) < 2:
        raise DeployError(f"cannot tell the service venv's Python version ({python_version!r})")
    return f"{VENV_DIR}/lib/python{parts[0]}.{parts[1]}/site-packages"


def render_unit(run: Run, java: str, python_version: str, firewall_unit: str) -> str:
    env = {**torchserve_env(), "PYTHONDONTWRITEBYTECODE": "1"}
    extra = "\n".join(f"Environment={k}={v}" for k, v in sorted(env.items()))
    serving = run.options.serving
    return render_template(
        "synthdet-torchserve.service",
        user=SERVICE_USER,
        var_dir=VAR_DIR,
        tmp_dir=TS_TMP_DIR,
        log_dir=LOG_DIR,
        venv=VENV_DIR,
        ts_home=ts_home(python_version),
        java=java,
        jvm_args=f"-Xmx{serving.java_heap_mb}m -XX:+ExitOnOutOfMemoryError",
        main_class=MAIN_CLASS,
        config=CONFIG_FILE,
        model_store=MODEL_STORE,
        firewall_unit=firewall_unit,
        extra_env=extra,
        # GPU device nodes (/dev/nvidia*) must stay visible when there is a GPU.
        private_devices="no" if run.facts.gpus else "yes",
    )


def java_path(run: Run) -> str:
    res = run.conn.run("command -v java", sudo=False, check=False)
    path = res.stdout.strip()
    if not res.ok or not path.startswith("/"):
        raise DeployError("java is not on the host's PATH; the packages step should have installed a JRE")
    return path


def management(run: Run, method: str, path: str, timeout_s: float = 30.0) -> tuple[int, str]:
    """(status, body) of a management API call made on the host as root; status 0 = no answer.

    As root: the firewall step lets no other login user reach the management port.
    """
    url = f"{MANAGEMENT_URL}{path}"
    res = run.conn.run(
        f"python3 - {shlex.quote(method)} {shlex.quote(url)} {timeout_s} <<'EOF'\n{_HTTP}\nEOF",
        timeout_s=timeout_s + 30,
    )
    data = json.loads(res.stdout.strip().splitlines()[-1])
    return int(data["status"]), str(data["body"])


def wait_for_management(run: Run, timeout_s: float) -> list[str]:
    """Registered model names, once the management API answers."""

    def registered() -> tuple[int, str]:
        return management(run, "GET", "/models", timeout_s=10)

    answered, (status, body) = poll(
        registered, lambda answer: answer[0] == 200, timeout_s=timeout_s, every_s=1.0
    )
    if not answered:
        raise DeployError(
            f"TorchServe's management API did not answer in {timeout_s:.0f} s "
            f"(last: {status} {body[:200]}). Logs: journalctl -u {UNIT_NAME}"
        )
    return [m["modelName"] for m in json.loads(body).get("models", [])]


def reload_model(run: Run, name: str, registered: bool) -> None:
    """Unregister (if loaded) and register one model, waiting until its workers are up."""
    timeout = run.options.serving.startup_timeout_s + 60
    delete_url = f"{MANAGEMENT_URL}/models/{name}" if registered else "-"
    register_url = (
        f"{MANAGEMENT_URL}/models?url={name}.mar&model_name={name}&initial_workers={run.workers_per_model}"
        f"&synchronous=true&response_timeout={run.options.serving.response_timeout_s}"
    )
    res = run.conn.run(
        f"python3 - {shlex.quote(delete_url)} {shlex.quote(register_url)} {timeout} <<'EOF'\n{_RELOAD}\nEOF",
        timeout_s=2 * timeout + 30,
    )
    data = json.loads(res.stdout.strip().splitlines()[-1])
    status, body = int(data["status"]), str(data["body"])
    if status != 200:
        raise DeployError(
            f"TorchServe could not load model {name}: {status} {body[:500]}\n"
            f"Logs: journalctl -u {UNIT_NAME}; {LOG_DIR}/model_log.log"
        )


def apply(run: Run, state: HostState, firewall: Firewall, venv: Venv, store: ModelStore) -> Done[TorchServe]:
    wanted = [spec.name for spec in run.models]
    previous = sorted(state.loaded_models)
    # Was the config, apart from its model list, already what we want? Then a
    # changed model list is applied live, without a restart.
    same_but_models = files.sha256(run.conn, CONFIG_FILE) == sha256_bytes(render_config(run, previous))

    unit = render_unit(run, java_path(run), venv.python_version, firewall.unit)
    unit_changed = ensure_file(run, UNIT_FILE, unit)
    config_changed = ensure_file(run, CONFIG_FILE, render_config(run, wanted), mode=0o640, group=SERVICE_USER)
    if unit_changed:
        run.conn.run("systemctl daemon-reload")
    enabled = run.conn.run(f"systemctl is-enabled {UNIT_NAME}", check=False).stdout.strip()
    if enabled != "enabled":
        run.conn.run(f"systemctl enable {UNIT_NAME}")

    active = systemctl_is_active(run, UNIT_NAME)
    restart = unit_changed or venv.switched or (config_changed and not same_but_models) or active != "active"
    detail: list[str] = []
    if restart:
        run.progress.status("(re)starting TorchServe")
        run.conn.run(f"systemctl restart {UNIT_NAME}")
        state.loaded_models = dict(store.sha256)
        detail.append("restarted" if active == "active" else "started")
    else:
        registered = wait_for_management(run, run.options.health_timeout_s)
        for name in wanted:
            if state.loaded_models.get(name) == store.sha256[name] and name in registered:
                continue
            run.progress.status(f"loading model {name} (TorchServe keeps running)")
            reload_model(run, name, name in registered)
            state.loaded_models[name] = store.sha256[name]
            write_state(run, state)
            detail.append(f"reloaded {name}")
        for name in registered:
            if name not in wanted:
                management(run, "DELETE", f"/models/{name}", timeout_s=120)
                detail.append(f"unloaded {name}")
    # Archives of models no longer deployed.
    stale = [n for n in previous if n not in wanted]
    for name in stale:
        state.loaded_models.pop(name, None)
    if stale:
        run.conn.run("rm -f " + " ".join(shlex.quote(f"{MODEL_STORE}/{n}.mar") for n in stale))
    write_state(run, state)
    changed = unit_changed or config_changed or restart or bool(detail)
    return Done(changed, ", ".join(detail) or "running, models current", TorchServe(tuple(wanted)))


# Its config is in the layout's /etc/synthdet, its logs in /var/log/synthdet.
STEP = Step("torchserve", apply, Footprint(units=(UNIT_NAME,), files=(UNIT_FILE,)))
