"""nginx in front of TorchServe: TLS on the public port, the URL secret, the viewer page.

The certificate is the user's own, or a self-signed one with the public
address in its SAN that is kept across reruns (its fingerprint is what users
pin) until the address changes or it nears expiry. nginx is reloaded (not
restarted) and only when its config or certificate changed, after `nginx -t`.

With ACME (`options.acme`, steps/acme.py) the public port belongs to a stream
splitter (`STREAM_CONF`) that hands the CA's TLS-ALPN-01 handshakes to the
certificate client and everything else to the site, which then listens on
loopback and learns the client's address from PROXY protocol; the certificate
is the client's to manage.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509

from bootstrap import files
from bootstrap.api import DeployOptions
from bootstrap.steps.base import (
    ALPN_PORT,
    CERT_FILE,
    INFERENCE_PORT,
    KEY_FILE,
    NGINX_DEFAULT_LINK,
    NGINX_SITE,
    NGINX_SITE_LINK,
    SITE_PORT,
    VIEWER_DIR,
    DeployError,
    HostState,
    Run,
    ensure_file,
    render_template,
    systemctl_is_active,
)
from bootstrap.steps.idle_stop import (
    IdleStop,
    remove_old_clock,
    render_activity_log,
    render_status_location,
)
from bootstrap.steps.layout import Layout
from bootstrap.steps.packages import SystemPackages
from bootstrap.steps.secret import Secret
from bootstrap.steps.step import Done, Footprint, Step
from serving.certs import make_self_signed
from serving.endpoint import LB_HEALTH_PATH
from serving.error_answers import nginx_error_locations, nginx_retry_after_map
from serving.viewer import content_security_policy, viewer_page

VIEWER_FILE = f"{VIEWER_DIR}/index.html"
RENEW_BEFORE = datetime.timedelta(days=30)
ZERO = datetime.timedelta(0)
# Debian's nginx.service does not restart nginx when it dies; the public
# endpoint must come back by itself, like TorchServe does.
NGINX_DROPIN_DIR = "/etc/systemd/system/nginx.service.d"
NGINX_DROPIN = f"{NGINX_DROPIN_DIR}/synthdet.conf"
NGINX_DROPIN_TEXT = """\
# Written by synthdet deploy: nginx fronts a public endpoint; restart it if it dies.
[Unit]
StartLimitIntervalSec=0

[Service]
Restart=always
RestartSec=2
"""
# The site writes no error log (every nginx error line carries the request line, with the
# secret: SECURITY.md); earlier versions did, at `crit`, and that file is removed.
OLD_ERROR_LOG = "/var/log/nginx/synthdet.error.log"
NGINX_LOGS = ("/var/log/nginx/synthdet.access.log*", f"{OLD_ERROR_LOG}*")
# Debian's and Ubuntu's nginx.conf include this folder in the main context (after
# 50-mod-stream.conf, which loads the stream module of libnginx-mod-stream).
NGINX_MODULES_DIR = "/etc/nginx/modules-enabled"
STREAM_CONF = f"{NGINX_MODULES_DIR}/60-synthdet-stream.conf"


@dataclass(frozen=True)
class Tls:
    """nginx serves the endpoint over TLS with this certificate (what clients pin)."""

    cert_pem: bytes


def cert_covers(
    cert_pem: bytes,
    address: str,
    now: datetime.datetime | None = None,
    renew_before: datetime.timedelta = RENEW_BEFORE,
) -> bool:
    """Whether a certificate names `address` in its SAN and is valid `renew_before` longer."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if cert.not_valid_after_utc - renew_before < now:
        return False
    try:
        ip = ipaddress.ip_address(address)
        return ip in san.get_values_for_type(x509.IPAddress)
    except ValueError:
        return address.lower() in (n.lower() for n in san.get_values_for_type(x509.DNSName))


def ensure_certificate(run: Run, state: HostState) -> tuple[bool, bytes]:
    """Put the certificate and key in place: (changed?, the certificate)."""
    opts = run.options
    if opts.tls_cert is not None and opts.tls_key is not None:
        cert_pem, key_pem = opts.tls_cert.read_bytes(), opts.tls_key.read_bytes()
        try:
            x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise DeployError(f"{opts.tls_cert} is not a PEM certificate: {exc}") from exc
        changed = ensure_file(run, CERT_FILE, cert_pem, mode=0o644)
        changed |= ensure_file(run, KEY_FILE, key_pem, mode=0o600)
        state.tls_source = "user"
        return changed, cert_pem
    current = files.read_file(run.conn, CERT_FILE)
    has_key = run.conn.run(f"test -s {KEY_FILE}", check=False).ok
    if opts.acme:
        # The host's ACME client owns the certificate (steps/acme.py): keep what it serves, its
        # CA's certificate or its self-signed fallback, while that names the address; it renews.
        if current is not None and has_key and cert_covers(current, run.public_address, renew_before=ZERO):
            state.tls_source = "acme"
            return False, current
    elif (
        current is not None
        and has_key
        and state.tls_source == "self-signed"
        and cert_covers(current, run.public_address)
    ):
        return False, current
    cert_pem, key_pem = make_self_signed([run.public_address])
    # Key first: nginx never sees a certificate without its key.
    ensure_file(run, KEY_FILE, key_pem, mode=0o600)
    ensure_file(run, CERT_FILE, cert_pem, mode=0o644)
    state.tls_source = "acme" if opts.acme else "self-signed"
    return True, cert_pem


# Per client address: the app sends at most 5 frames/s with 5 in flight; allow
# a few phones behind one NAT before answering 429.
CLIENT_RATE_PER_S = 20
CLIENT_BURST = 20
CLIENT_INFLIGHT = 20


def inflight_per_model(workers: int, batch_size: int, has_gpu: bool) -> int:
    """Requests of one model nginx lets through to TorchServe at the same time.

    What the workers can finish within the app's 2 s deadline: on a GPU a
    batch takes ~0.1-0.4 s, so two full batches per worker; on a CPU one image
    takes 2-3 s, already past the deadline, so only what is being computed
    (queueing more would only answer clients that have given up). The rest
    gets a fast 503 with Retry-After.
    """
    return workers * batch_size * 2 if has_gpu else workers


def render_listen(options: DeployOptions) -> str:
    """Where the site listens: the public port, or with ACME loopback behind the splitter."""
    if options.acme:
        return f"127.0.0.1:{SITE_PORT} ssl proxy_protocol"
    return f"{options.public_port} ssl"


def render_real_ip(balancer_cidrs: tuple[str, ...], proxy_protocol: bool = False) -> str:
    """Behind a load balancer: the client's address from X-Forwarded-For, so that the
    per-address limits count phones, not balancer nodes. Behind the ACME splitter: from
    its PROXY protocol header (one real_ip_header per server: never both)."""
    if proxy_protocol:
        return (
            "    # Behind this host's stream splitter (ACME): the client's address from PROXY protocol.\n"
            "    set_real_ip_from 127.0.0.1;\n    real_ip_header proxy_protocol;\n"
        )
    if not balancer_cidrs:
        return ""
    lines = ["    # Behind the cloud's load balancer: rate limits count phones, not its nodes."]
    lines += [f"    set_real_ip_from {cidr};" for cidr in balancer_cidrs]
    lines += ["    real_ip_header X-Forwarded-For;", "    real_ip_recursive on;", ""]
    return "\n".join(lines)


def render_balancer_health(balancer_cidrs: tuple[str, ...]) -> str:
    """The balancer's health check path: no secret in it (so none in the balancer's
    configuration), answered to the balancer's addresses only.

    The balancer forwards every path, so a phone can ask for it too: its address (from
    X-Forwarded-For, see render_real_ip) is refused with the 404 any unknown path gets.
    (A location's own error_page replaces the server's, hence the 502-504 line again.)"""
    if not balancer_cidrs:
        return ""
    allow = "\n".join(f"        allow {cidr};" for cidr in balancer_cidrs)
    return (
        f"\n    location = {LB_HEALTH_PATH} {{\n"
        "        limit_except GET { deny all; }\n"
        f"{allow}\n        deny all;\n"
        "        error_page 403 =404 @synthdet_404;\n"
        "        error_page 502 503 504 =503 @synthdet_503;\n"
        "        proxy_pass http://synthdet_torchserve/ping;\n    }\n"
    )


def render_site(run: Run, secret: str) -> str:
    serving = run.options.serving
    inflight = inflight_per_model(run.workers_per_model, serving.batch_size, bool(run.facts.gpus))
    locations = "".join(
        render_template(
            "nginx-model-location.conf",
            secret=secret,
            name=spec.name,
            inflight=inflight,
            client_inflight=CLIENT_INFLIGHT,
            client_burst=CLIENT_BURST,
            activity_log=render_activity_log(run.options.idle_stop_minutes),
        )
        for spec in run.models
    )
    return render_template(
        "nginx-site.conf",
        listen=render_listen(run.options),
        cert_file=CERT_FILE,
        key_file=KEY_FILE,
        inference_port=INFERENCE_PORT,
        max_body=serving.max_request_bytes,
        read_timeout=serving.response_timeout_s + 30,
        secret=secret,
        model_locations=locations,
        miss_rate=10,
        miss_burst=40,
        client_rate=CLIENT_RATE_PER_S,
        client_burst=CLIENT_BURST,
        retry_after_map=nginx_retry_after_map(),
        error_locations=nginx_error_locations(serving.max_request_bytes),
        real_ip=render_real_ip(run.options.balancer_cidrs, proxy_protocol=run.options.acme),
        balancer_health=render_balancer_health(run.options.balancer_cidrs),
        idle_status=render_status_location(run.options.idle_stop_minutes, secret, CLIENT_BURST),
        csp=content_security_policy(),
        viewer_file=VIEWER_FILE,
    )


# `idle`: the idle clock's directory exists before nginx opens its log there.
def apply(
    run: Run, state: HostState, packages: SystemPackages, layout: Layout, secret: Secret, idle: IdleStop
) -> Done[Tls]:
    changed, cert_pem = ensure_certificate(run, state)
    # The viewer page holds no secret (it posts to its own URL): nginx's workers read it.
    changed |= ensure_file(run, VIEWER_FILE, viewer_page(), mode=0o644)
    # The site holds the URL secret: root-only, like the secret's own file.
    changed |= ensure_file(run, NGINX_SITE, render_site(run, secret.value), mode=0o600)
    run.conn.run(f"rm -f {OLD_ERROR_LOG} {OLD_ERROR_LOG}.*")
    link = run.conn.run(
        f'[ "$(readlink {NGINX_SITE_LINK})" = {NGINX_SITE} ] || '
        f"{{ ln -sfn {NGINX_SITE} {NGINX_SITE_LINK}; echo CHANGED; }}; "
        # Debian's default site listens on :80 and would be served to anyone.
        f"if [ -e {NGINX_DEFAULT_LINK} ] || [ -L {NGINX_DEFAULT_LINK} ]; then "
        f"rm -f {NGINX_DEFAULT_LINK}; echo REMOVED_DEFAULT; fi"
    ).stdout
    if "REMOVED_DEFAULT" in link:
        state.removed_default_site = True
    changed |= "CHANGED" in link or "REMOVED_DEFAULT" in link

    changed |= ensure_stream(run)
    run.conn.run(f"mkdir -p {NGINX_DROPIN_DIR}")
    if ensure_file(run, NGINX_DROPIN, NGINX_DROPIN_TEXT):
        run.conn.run("systemctl daemon-reload")
        changed = True

    test = run.conn.run("nginx -t", check=False)
    if not test.ok:
        raise DeployError(f"nginx rejects its configuration:\n{test.stderr.strip()[-1500:]}")
    run.conn.run("systemctl is-enabled --quiet nginx || systemctl enable --quiet nginx")
    active = systemctl_is_active(run, "nginx")
    if active != "active":
        run.conn.run("systemctl restart nginx")
        changed = True
    elif changed:
        run.conn.run("systemctl reload nginx")
    # Idle stop turned off: its clock's folder goes now that the site no longer logs there.
    changed |= remove_old_clock(run, idle)
    port = run.options.public_port
    split = " (ACME's TLS-ALPN-01 split off to the certificate client)" if run.options.acme else ""
    where = f"TLS on :{port}{split}"
    return Done(changed, where + (" (reloaded)" if changed else ""), Tls(cert_pem))


def render_stream(public_port: int) -> str:
    return render_template("nginx-stream.conf", port=public_port, site_port=SITE_PORT, alpn_port=ALPN_PORT)


def ensure_stream(run: Run) -> bool:
    """The splitter on the public port with ACME; without, none (the site listens there)."""
    if not run.options.acme:
        if files.sha256(run.conn, STREAM_CONF) is None:
            return False
        run.conn.run(f"rm -f {STREAM_CONF}")
        return True
    if not run.conn.run(f"test -d {NGINX_MODULES_DIR}", check=False).ok:
        raise DeployError(
            f"this nginx has no {NGINX_MODULES_DIR} (not Debian's or Ubuntu's package), where ACME's "
            "stream splitter goes: install the distribution's nginx, or deploy without ACME"
        )
    return ensure_file(run, STREAM_CONF, render_stream(run.options.public_port), mode=0o644)


def restore_nginx(state: HostState) -> tuple[str, ...]:
    """After undeploy removed the site: Debian's default site back if deploy took it away,
    and nginx reloaded so that it stops serving the endpoint."""
    lines = []
    if state.removed_default_site:
        lines.append(
            "[ -e /etc/nginx/sites-available/default ] && "
            f"ln -sfn /etc/nginx/sites-available/default {NGINX_DEFAULT_LINK} || true"
        )
    reload = "nginx -t 2>/dev/null && systemctl reload nginx || true"
    lines.append(f"if systemctl is-active --quiet nginx; then {reload}; fi")
    return tuple(lines)


# The certificate and key are in the layout's /etc/synthdet/tls, the viewer page in /opt/synthdet.
STEP = Step(
    "nginx",
    apply,
    Footprint(
        files=(NGINX_SITE_LINK, NGINX_SITE, NGINX_DROPIN, STREAM_CONF, *NGINX_LOGS),
        shared_dirs=(NGINX_DROPIN_DIR,),
        restore=restore_nginx,
    ),
)
