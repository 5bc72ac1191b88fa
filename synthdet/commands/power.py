"""Commands about a host that stops itself when idle: wake, status (logic: synthdet/wake.py)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from synthdet.commands.common import StackOption, console, fail, print_qr
from synthdet.commands.endpoint import PROJECT_DIR
from synthdet.console import escape
from synthdet.stack_outputs import StackError, StackOutputs, read_stack_outputs
from synthdet.wake import (
    DEFAULT_TIMEOUT_S,
    CertificateSeen,
    IdleStatus,
    StackStatus,
    WakeError,
    stack_status,
    url_status,
    wake,
)


def register(app: typer.Typer) -> None:
    app.command(name="wake")(wake_command)
    app.command(name="status")(status)


def dollars(usd: float) -> str:
    return f"${usd:.2f}" if usd >= 0.1 or usd == 0 else f"${usd:.3f}"


def idle_stop_note(minutes: int | None, stack: str | None = None) -> str:
    """One line for people: when the host stops, and how it comes back."""
    if minutes is None:
        return "idle stop: unknown (the stack predates it: `pulumi up` refreshes its outputs)"
    if minutes == 0:
        how = "`pulumi config set synthdet:idleStopMinutes 30`" if stack else "`--idle-stop-minutes 30`"
        return f"idle stop: off: the host runs, and bills, until you stop it ({how} stops it when unused)"
    wake_it = f"`synthdet wake --stack {stack}` starts it again" if stack else "power it on again to use it"
    return (
        f"idle stop: the host powers itself off after {minutes} minutes without a prediction request "
        f"or login; {wake_it} (same URL and QR code)"
    )


def _say(line: str) -> None:
    console.print(f"[dim]… {escape(line)}[/dim]")


def _outputs(stack: str) -> StackOutputs:
    try:
        return read_stack_outputs(stack, PROJECT_DIR)
    except StackError as exc:
        fail(str(exc))


def wake_command(
    stack: StackOption,
    timeout: Annotated[
        float, typer.Option(min=10, help="Seconds to wait for the VM and then its endpoint.")
    ] = DEFAULT_TIMEOUT_S,
    plain: Annotated[bool, typer.Option("--plain", help="QR without colours.")] = False,
) -> None:
    """Start a stack's host that stopped itself when idle; wait until it answers; print its QR code."""
    outputs = _outputs(stack)
    try:
        result = wake(outputs, PROJECT_DIR, timeout_s=timeout, say=_say)
    except WakeError as exc:
        fail(str(exc))
    how = "started and answering" if result.started else "answering"
    console.print(
        f"[bold green]{escape(stack)}: {how}[/] after {result.seconds:.0f} s: HTTP {result.smoke.status} "
        f"in {result.smoke.latency_ms:.0f} ms, {len(result.smoke.detections)} detections"
    )
    print_qr(result.endpoint, plain)
    console.print(f"Endpoint: {result.endpoint}", markup=False)
    console.print(idle_stop_note(result.idle_stop_minutes, stack), markup=False)


def status(
    stack: Annotated[str | None, typer.Option("--stack", help="The Pulumi stack.")] = None,
    url: Annotated[
        str | None, typer.Option(help="Or a deployed endpoint's URL (`synthdet deploy`): its idle clock.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Running or stopped, idle minutes so far, the idle-stop setting, and what it costs per hour now."""
    if (stack is None) == (url is None):
        fail("give exactly one of --stack STACK or --url URL")
    try:
        if url is not None:
            idle, seen = url_status(url)
            if as_json:
                typer.echo(
                    json.dumps(
                        {
                            "idle": None if idle is None else asdict(idle),
                            "certificate": None if seen is None else asdict(seen),
                        }
                    )
                )
            else:
                console.print(_idle_line(idle, None), markup=False)
                if seen is not None:
                    console.print(certificate_line(seen, None), markup=False)
            return
        assert stack is not None
        found = stack_status(_outputs(stack), PROJECT_DIR)
    except WakeError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(found.to_json()))
        return
    for line in status_lines(found):
        console.print(line, markup=False)


def status_lines(found: StackStatus) -> list[str]:
    where = f" ({found.cloud_state}, {found.where})" if found.where else ""
    lines = [f"{found.stack}: {found.state}{where}"]
    if found.state == "fleet":
        lines.append("a fleet does not stop: when quiet it scales to its minimum (synthdet:replicas)")
    else:
        minutes = found.idle.idle_stop_minutes if found.idle else found.idle_stop_minutes
        lines.append(idle_stop_note(minutes, found.stack))
        if found.idle is not None or found.idle_unread:
            lines.append(_idle_line(found.idle, found.idle_unread))
        elif minutes and found.state in ("running", "answering"):
            lines.append(
                "idle clock: none on the host: the deploy with idle stop did not finish "
                f"(`pulumi up --stack {found.stack}`)"
            )
        if found.certificate is not None:
            lines.append(certificate_line(found.certificate, found.certificate_source))
    lines.append(_cost_line(found))
    return lines


def certificate_line(seen: CertificateSeen, source: str | None) -> str:
    """How a phone's browser meets the certificate, and what to do when it is not the one asked for."""
    if seen.public:
        return f"certificate: publicly trusted (a padlock), {seen.issuer}, valid until {seen.not_after}"
    why = "`sudo journalctl -t synthdet-cert` on the host says why; it retries at boot and hourly"
    if seen.expired:
        line = (
            f"certificate: expired at {seen.not_after} (browsers warn; the app accepts it), "
            f"{seen.issuer}, SHA-256 {seen.sha256}"
        )
        if source == "acme":
            line += f"; the certificate client has not renewed it ({why})"
        return line
    line = f"certificate: not publicly trusted (browsers warn; the app accepts it), SHA-256 {seen.sha256}"
    if source == "acme" and seen.self_signed:
        line += (
            "; ACME is on, so this is the self-signed fallback: the certificate client could not get "
            f"or renew one ({why})"
        )
    return line


def _idle_line(idle: IdleStatus | None, unread: str | None) -> str:
    if idle is None:
        return (
            f"idle clock: not read ({unread})" if unread else "idle clock: none on the host (idle stop off)"
        )
    last = (
        f"last request {idle.last_request_at}"
        if idle.last_request_at
        else "no request since the window opened"
    )
    logins = f"; {idle.sessions} login session(s) open: the clock waits for them" if idle.sessions else ""
    return (
        f"idle {idle.idle_minutes} of {idle.idle_stop_minutes} minutes (checked {idle.checked_at}); "
        f"powers off at {idle.stops_at} unless used; {last}{logins}"
    )


def _cost_line(found: StackStatus) -> str:
    running, stopped, now = (
        found.hourly_cost_usd_running,
        found.hourly_cost_usd_stopped,
        found.hourly_cost_usd_now,
    )
    if found.state == "fleet":
        return f"cost now: {dollars(now)}/h at the minimum size" if now is not None else "cost now: unknown"
    if found.where is None:
        return "cost: a machine of your own (not in the price table)"
    if now is None:
        return "cost now: unknown (not in infra/prices.yaml)"
    if found.state in ("stopped", "suspended"):
        other = f"; running: {dollars(running)}/h" if running is not None else ""
        return (
            f"cost now: {dollars(now)}/h, disk and address only{other}; "
            f"`synthdet wake --stack {found.stack}` starts it"
        )
    if found.state == "gone":
        return "cost now: nothing (the VM is gone; its disk went with it)"
    other = f" (stopped: {dollars(stopped)}/h for disk and address)" if stopped is not None else ""
    return f"cost now: {dollars(now)}/h{other}"
