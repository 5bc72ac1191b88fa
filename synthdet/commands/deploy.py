"""`synthdet deploy` / `synthdet undeploy`: options in, library call, rich output.

No logic lives here: options become SshTarget/ModelSpec/DeployOptions and
`bootstrap.deploy` does the work (the Pulumi provider calls the same).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TransferSpeedColumn

from bootstrap import deploy as deploy_lib
from bootstrap.api import (
    DEFAULT_KNOWN_HOSTS,
    LETS_ENCRYPT_DIRECTORY,
    LETS_ENCRYPT_TERMS,
    DeployOptions,
    DeployResult,
    PipSource,
    SshTarget,
)
from bootstrap.runner import RunnerError
from serving.models import ModelSpec
from serving.qr import render_terminal, write_png
from serving.settings import ServingSettings
from synthdet.commands.common import tilde
from synthdet.commands.power import idle_stop_note
from synthdet.console import escape, make_console
from synthdet.url_secret import ENV_VAR as URL_SECRET_ENV
from synthdet.url_secret import choose_url_secret

# The default known_hosts as --help shows it: the home as ~, and in words that wrap (a
# long path in rich's narrow help column is cut off at 80 columns).
KNOWN_HOSTS_SHOWN = f"{DEFAULT_KNOWN_HOSTS.name} in {tilde(DEFAULT_KNOWN_HOSTS.parent)}"


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.command("undeploy")(undeploy)


class RichReporter:
    """bootstrap.api.DeployReporter drawn with rich: status lines, steps, upload bars."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._bars: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def status(self, message: str) -> None:
        self.console.print(f"[dim]… {escape(message)}[/dim]")

    def step_done(self, name: str, changed: bool | None, detail: str = "") -> None:
        self._close_bars()
        if changed is None:  # a check: it looked, and changes nothing
            mark = "[green]checked  [/green]"
        else:
            mark = "[yellow]changed  [/yellow]" if changed else "[green]unchanged[/green]"
        self.console.print(f"{mark} {escape(name)}  [dim]{escape(detail)}[/dim]")

    def upload(self, label: str, sent: int, total: int) -> None:
        if self._bars is None:
            self._bars = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=self.console,
                transient=False,
            )
            self._bars.start()
        if label not in self._tasks:
            self._tasks[label] = self._bars.add_task(f"upload {label}", total=total)
        self._bars.update(self._tasks[label], completed=sent, total=total)

    def _close_bars(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
            self._tasks.clear()


def _target(host: str, user: str, key: Path | None, port: int, known_hosts: Path) -> SshTarget:
    return SshTarget(host=host, user=user, key_path=key, port=port, known_hosts=known_hosts)


def _settings(settings_file: Path | None, overrides: dict[str, object]) -> ServingSettings:
    base: dict[str, object] = {}
    if settings_file is not None:
        base = yaml.safe_load(settings_file.read_text(encoding="utf-8")) or {}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return ServingSettings.model_validate(base)


def _print_result(console: Console, result: DeployResult, qr_png: Path | None) -> None:
    console.print()
    for name, url in result.endpoints.items():
        console.print(f"[bold]{escape(name)}[/bold]: {escape(url)}")
        console.print(render_terminal(url, ansi=console.is_terminal), markup=False)
        if qr_png is not None:
            path = (
                qr_png
                if len(result.endpoints) == 1
                else qr_png.with_name(f"{qr_png.stem}-{name}{qr_png.suffix}")
            )
            write_png(url, path)
            console.print(f"QR code written to {path}", markup=False)
    console.print(f"Certificate SHA-256: {result.cert_sha256}", markup=False)
    _print_certificate(console, result.certificate)
    console.print(f"Endpoint: {result.endpoint}", markup=False)
    console.print(
        "Scan the QR code with the SynthDet Viewer app, or with any phone's camera for the web viewer."
    )
    console.print(
        "Logs: ssh to the host, then `journalctl -u synthdet-torchserve -f` "
        "(model logs: /var/log/synthdet/model_log.log)"
    )
    if not result.changed:
        console.print("[green]Nothing changed: the host was already up to date.[/green]")


def _print_certificate(console: Console, certificate: dict[str, str]) -> None:
    """Whether browsers trust the endpoint, in one line (the padlock, or why not)."""
    note = certificate.get("note", "")
    if certificate.get("public") == "yes":
        console.print(
            f"Certificate: publicly trusted ({note}); browsers open the URL without a warning. Its "
            "SHA-256 changes at every renewal; the URL and QR code do not.",
            markup=False,
        )
    elif certificate.get("source") == "acme" or note:
        console.print(f"[yellow]Certificate: self-signed[/yellow] ({escape(note)})")


def _acme_terms(console: Console, directory: str) -> None:
    """Registering with the CA agrees to its terms: say whose, before the deploy does."""
    terms = LETS_ENCRYPT_TERMS if directory == LETS_ENCRYPT_DIRECTORY else "the terms in its directory"
    console.print(
        f"ACME: the host registers an account with {escape(directory)} and agrees to the CA's terms "
        f"of service ({escape(terms)})."
    )


def _fail(console: Console, exc: BaseException) -> typer.Exit:
    console.print(f"[bold red]error:[/bold red] {escape(str(exc))}")
    return typer.Exit(code=1)


def deploy(
    host: Annotated[str, typer.Option(help="Address of the host to deploy to (SSH).")],
    model: Annotated[
        list[str],
        typer.Option(
            help="Checkpoint to serve: PATH (served as 'synthdet') or NAME=PATH; repeat "
            "for several models side by side."
        ),
    ],
    user: Annotated[str, typer.Option(help="SSH login user (root, ubuntu, debian ...).")] = "root",
    key: Annotated[Path | None, typer.Option(help="SSH private key file.")] = None,
    port: Annotated[int, typer.Option(help="SSH port.")] = 22,
    known_hosts: Annotated[
        Path,
        typer.Option(
            help=f"Where host keys are recorded; a changed key is refused. Default: {KNOWN_HOSTS_SHOWN}",
            show_default=False,
        ),
    ] = DEFAULT_KNOWN_HOSTS,
    label_map: Annotated[
        Path | None, typer.Option(help="index_to_name.json for every model (default: SynthDet's).")
    ] = None,
    public_address: Annotated[
        str | None, typer.Option(help="Address in URLs and the certificate (default: --host).")
    ] = None,
    public_port: Annotated[int, typer.Option(help="HTTPS port nginx listens on.")] = 443,
    url_secret_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the secret path segment of the URL ('-': stdin; or set "
            f"{URL_SECRET_ENV}). Default: keep the host's, or generate one; pass a new one to rotate."
        ),
    ] = None,
    url_secret: Annotated[
        str | None,
        typer.Option(
            help="The secret itself (discouraged: every local user sees it in the process list; "
            f"use --url-secret-file or {URL_SECRET_ENV})."
        ),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Your own certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM).")] = None,
    acme: Annotated[
        bool,
        typer.Option(
            help="A publicly trusted certificate for the public address from an ACME CA (Let's "
            "Encrypt; an IP address gets its 160-hour certificates), validated through port 443 "
            "(TLS-ALPN-01) and renewed on the host; needs a public address. Registering agrees to "
            f"the CA's terms ({LETS_ENCRYPT_TERMS}). Off: self-signed."
        ),
    ] = False,
    acme_email: Annotated[
        str | None, typer.Option(help="Contact email for the ACME account (expiry notices).")
    ] = None,
    acme_directory: Annotated[
        str, typer.Option(help="ACME directory URL of another CA (staging, a private CA, pebble).")
    ] = LETS_ENCRYPT_DIRECTORY,
    acme_ca: Annotated[
        Path | None,
        typer.Option(
            help="CA certificates (PEM) to trust for that ACME server: its HTTPS and the roots it "
            "issues under (private CAs, tests)."
        ),
    ] = None,
    pip_index_url: Annotated[str | None, typer.Option(help="Package index or mirror.")] = None,
    pip_find_links: Annotated[
        str | None, typer.Option(help="Wheelhouse URL/dir; alone it means no index at all.")
    ] = None,
    pip_trusted_host: Annotated[
        list[str] | None, typer.Option(help="Host allowed over plain HTTP (repeatable).")
    ] = None,
    torch_index_url: Annotated[
        str | None, typer.Option(help="Base of the torch wheel indexes (<base>/cu126 ...).")
    ] = None,
    torch_version: Annotated[
        str | None, typer.Option(help="Pin the torch the bootstrap installs (when it must).")
    ] = None,
    python: Annotated[
        str | None,
        typer.Option(
            help="Python on the host for the service venv (>= 3.10; default: the image's, "
            "else python3.1x or one installed with apt/uv)."
        ),
    ] = None,
    settings: Annotated[
        Path | None, typer.Option(help="YAML/JSON file of serving settings (ServingSettings).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Model workers per model.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Requests per forward pass.")] = None,
    score_threshold: Annotated[float | None, typer.Option(help="Server-side score cut-off.")] = None,
    java_heap_mb: Annotated[int | None, typer.Option(help="TorchServe frontend heap.")] = None,
    ssh_wait: Annotated[
        float, typer.Option(help="Seconds to wait for SSH on a booting host.")
    ] = DeployOptions.ssh_wait_timeout_s,
    smoke: Annotated[bool, typer.Option(help="Send a test image after deploying.")] = True,
    idle_stop_minutes: Annotated[
        int,
        typer.Option(
            min=0,
            max=1440,
            help="Power the host off after this many minutes without a prediction request or SSH "
            "login (0: never).",
        ),
    ] = 0,
    qr_png: Annotated[Path | None, typer.Option(help="Also write the QR code as PNG.")] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Last stdout line: one JSON object with the result.")
    ] = False,
) -> None:
    """Turn a host you can SSH into into an HTTPS endpoint for the SynthDet app."""
    # With --json, humans read stderr and programs read stdout's last line.
    console = make_console(stderr=json_output)
    try:
        secret = choose_url_secret(flag=url_secret, file=url_secret_file, environ=os.environ)
        if secret.warning:
            console.print(f"[yellow]warning:[/yellow] {escape(secret.warning)}")
        options = DeployOptions(
            public_port=public_port,
            public_address=public_address,
            url_secret=secret.value,
            tls_cert=tls_cert,
            tls_key=tls_key,
            pip=PipSource(pip_index_url, pip_find_links, tuple(pip_trusted_host or ())),
            serving=_settings(
                settings,
                {
                    "workers": workers,
                    "batch_size": batch_size,
                    "score_threshold": score_threshold,
                    "java_heap_mb": java_heap_mb,
                },
            ),
            ssh_wait_timeout_s=ssh_wait,
            torch_index_url=torch_index_url,
            torch_version=torch_version,
            python=python,
            smoke=smoke,
            acme=acme,
            acme_email=acme_email,
            acme_directory=acme_directory,
            acme_ca=acme_ca,
            idle_stop_minutes=idle_stop_minutes,
        )
        if acme:
            _acme_terms(console, acme_directory)
        specs = [ModelSpec.parse(m, label_map) for m in model]
        result = deploy_lib.deploy(
            _target(host, user, key, port, known_hosts), specs, options, RichReporter(console)
        )
    except (RunnerError, deploy_lib.DeployError, ValueError, FileNotFoundError) as exc:
        raise _fail(console, exc) from exc
    _print_result(console, result, qr_png)
    console.print(idle_stop_note(idle_stop_minutes), markup=False)
    if json_output:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")


def undeploy(
    host: Annotated[str, typer.Option(help="Address of the host (SSH).")],
    user: Annotated[str, typer.Option(help="SSH login user.")] = "root",
    key: Annotated[Path | None, typer.Option(help="SSH private key file.")] = None,
    port: Annotated[int, typer.Option(help="SSH port.")] = 22,
    known_hosts: Annotated[
        Path, typer.Option(help=f"Recorded host keys. Default: {KNOWN_HOSTS_SHOWN}", show_default=False)
    ] = DEFAULT_KNOWN_HOSTS,
    keep_packages: Annotated[
        bool, typer.Option(help="Keep the system packages deploy installed (JRE, nginx).")
    ] = False,
) -> None:
    """Remove what `synthdet deploy` installed on the host (and nothing else)."""
    console = make_console(stderr=False)
    try:
        deploy_lib.undeploy(
            _target(host, user, key, port, known_hosts),
            progress=RichReporter(console),
            keep_packages=keep_packages,
        )
    except (RunnerError, deploy_lib.DeployError) as exc:
        raise _fail(console, exc) from exc
    console.print("[green]Removed.[/green]")
