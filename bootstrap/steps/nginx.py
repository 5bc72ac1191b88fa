"""nginx in front of TorchServe: TLS on the public port, the URL secret, the viewer page.

The certificate is the user's own, or a self-signed one with the public
address in its SAN that is kept across reruns (its fingerprint is what users
pin) until the address changes or it nears expiry. nginx is reloaded (not
restarted) and only when its config or certificate changed, after `nginx -t`.
"""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509

from bootstrap import files
from bootstrap.steps.base import (
    CERT_FILE,
    INFERENCE_PORT,
    KEY_FILE,
    NGINX_DEFAULT_LINK,
    NGINX_SITE,
    NGINX_SITE_LINK,
    VIEWER_DIR,
    Context,
    DeployError,
    StepResult,
    ensure_file,
    render_template,
    systemctl_is_active,
)
from serving.certs import make_self_signed
from serving.endpoint import LB_HEALTH_PATH
from serving.viewer import content_security_policy, viewer_page

NAME = "nginx"
VIEWER_FILE = f"{VIEWER_DIR}/index.html"
RENEW_BEFORE = datetime.timedelta(days=30)
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


def cert_covers(cert_pem: bytes, address: str, now: datetime.datetime | None = None) -> bool:
    """Whether a certificate names `address` in its SAN and is valid for a while yet."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if cert.not_valid_after_utc - RENEW_BEFORE < now:
        return False
    try:
        ip = ipaddress.ip_address(address)
        return ip in san.get_values_for_type(x509.IPAddress)
    except ValueError:
        return address.lower() in (n.lower() for n in san.get_values_for_type(x509.DNSName))


def ensure_certificate(ctx: Context) -> bool:
    """Put the certificate and key in place; sets ctx.cert_pem. True when changed."""
    opts = ctx.options
    if opts.tls_cert is not None and opts.tls_key is not None:
        cert_pem, key_pem = opts.tls_cert.read_bytes(), opts.tls_key.read_bytes()
        try:
            x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise DeployError(f"{opts.tls_cert} is not a PEM certificate: {exc}") from exc
        changed = ensure_file(ctx, CERT_FILE, cert_pem, mode=0o644)
        changed |= ensure_file(ctx, KEY_FILE, key_pem, mode=0o600)
        ctx.state.tls_source = "user"
        ctx.cert_pem = cert_pem
        return changed
    current = files.read_file(ctx.conn, CERT_FILE)
    has_key = ctx.conn.run(f"test -s {KEY_FILE}", check=False).ok
    if (
        current is not None
        and has_key
        and ctx.state.tls_source == "self-signed"
        and cert_covers(current, ctx.public_address)
    ):
        ctx.cert_pem = current
        return False
    cert_pem, key_pem = make_self_signed([ctx.public_address])
    # Key first: nginx never sees a certificate without its key.
    ensure_file(ctx, KEY_FILE, key_pem, mode=0o600)
    ensure_file(ctx, CERT_FILE, cert_pem, mode=0o644)
    ctx.state.tls_source = "self-signed"
    ctx.cert_pem = cert_pem
    return True


# Per client address: the app sends at most 5 frames/s with 5 in flight; allow
# a few phones behind one NAT before answering 429.
CLIENT_RATE_PER_S = 20
CLIENT_BURST = 20
CLIENT_INFLIGHT = 20
# Seconds a refused client is told to wait (Retry-After on 429 and 503).
RETRY_AFTER_S = 1


def inflight_per_model(workers: int, batch_size: int, has_gpu: bool) -> int:
    """Requests of one model nginx lets through to TorchServe at the same time.

    What the workers can finish within the app's 2 s deadline: on a GPU a
    batch takes ~0.1-0.4 s, so two full batches per worker; on a CPU one image
    takes 2-3 s, already past the deadline, so only what is being computed
    (queueing more would only answer clients that have given up). The rest
    gets a fast 503 with Retry-After.
    """
    return workers * batch_size * 2 if has_gpu else workers


def render_real_ip(balancer_cidrs: tuple[str, ...]) -> str:
    """Behind a load balancer: the client's address from X-Forwarded-For, so that the
    per-address limits count phones, not balancer nodes."""
    if not balancer_cidrs:
        return ""
    lines = ["    # Behind the cloud's load balancer: rate limits count phones, not its nodes."]
    lines += [f"    set_real_ip_from {cidr};" for cidr in balancer_cidrs]
    lines += ["    real_ip_header X-Forwarded-For;", "    real_ip_recursive on;", ""]
    return "\n".join(lines)


def render_balancer_health(balancer_cidrs: tuple[str, ...]) -> str:
    """The balancer's health check path: no secret in it (so none in the balancer's
    configuration), answered to the balancer's addresses only."""
    if not balancer_cidrs:
        return ""
    allow = "\n".join(f"        allow {cidr};" for cidr in balancer_cidrs)
    return (
        f"\n    location = {LB_HEALTH_PATH} {{\n"
        "        limit_except GET { deny all; }\n"
        f"{allow}\n        deny all;\n"
        "        proxy_pass http://synthdet_torchserve/ping;\n    }\n"
    )


def render_site(ctx: Context) -> str:
    serving = ctx.options.serving
    inflight = inflight_per_model(ctx.workers_per_model, serving.batch_size, bool(ctx.facts.gpus))
    locations = "".join(
        render_template(
            "nginx-model-location.conf",
            secret=ctx.secret,
            name=spec.name,
            inflight=inflight,
            client_inflight=CLIENT_INFLIGHT,
            client_burst=CLIENT_BURST,
        )
        for spec in ctx.models
    )
    return render_template(
        "nginx-site.conf",
        port=ctx.options.public_port,
        cert_file=CERT_FILE,
        key_file=KEY_FILE,
        inference_port=INFERENCE_PORT,
        max_body=serving.max_request_bytes,
        read_timeout=serving.response_timeout_s + 30,
        secret=ctx.secret,
        model_locations=locations,
        miss_rate=10,
        miss_burst=40,
        client_rate=CLIENT_RATE_PER_S,
        client_burst=CLIENT_BURST,
        retry_after=RETRY_AFTER_S,
        real_ip=render_real_ip(ctx.options.balancer_cidrs),
        balancer_health=render_balancer_health(ctx.options.balancer_cidrs),
        csp=content_security_policy(),
        viewer_file=VIEWER_FILE,
    )


def apply(ctx: Context) -> StepResult:
    changed = ensure_certificate(ctx)
    # The viewer page holds no secret (it posts to its own URL): nginx's workers read it.
    changed |= ensure_file(ctx, VIEWER_FILE, viewer_page(), mode=0o644)
    # The site holds the URL secret: root-only, like the secret's own file.
    changed |= ensure_file(ctx, NGINX_SITE, render_site(ctx), mode=0o600)
    link = ctx.conn.run(
        f'[ "$(readlink {NGINX_SITE_LINK})" = {NGINX_SITE} ] || '
        f"{{ ln -sfn {NGINX_SITE} {NGINX_SITE_LINK}; echo CHANGED; }}; "
        # Debian's default site listens on :80 and would be served to anyone.
        f"if [ -e {NGINX_DEFAULT_LINK} ] || [ -L {NGINX_DEFAULT_LINK} ]; then "
        f"rm -f {NGINX_DEFAULT_LINK}; echo REMOVED_DEFAULT; fi"
    ).stdout
    if "REMOVED_DEFAULT" in link:
        ctx.state.removed_default_site = True
    changed |= "CHANGED" in link or "REMOVED_DEFAULT" in link

    ctx.conn.run(f"mkdir -p {NGINX_DROPIN_DIR}")
    if ensure_file(ctx, NGINX_DROPIN, NGINX_DROPIN_TEXT):
        ctx.conn.run("systemctl daemon-reload")
        changed = True

    test = ctx.conn.run("nginx -t", check=False)
    if not test.ok:
        raise DeployError(f"nginx rejects its configuration:\n{test.stderr.strip()[-1500:]}")
    ctx.conn.run("systemctl is-enabled --quiet nginx || systemctl enable --quiet nginx")
    active = systemctl_is_active(ctx, "nginx")
    if active != "active":
        ctx.conn.run("systemctl restart nginx")
        changed = True
    elif changed:
        ctx.conn.run("systemctl reload nginx")
    port = ctx.options.public_port
    return StepResult(NAME, changed, f"TLS on :{port}" + (" (reloaded)" if changed else ""))
