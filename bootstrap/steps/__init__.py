"""Deploy steps, one module each, run in this order by `bootstrap.deploy`.

Each module has `NAME` and `apply(ctx) -> StepResult` (idempotent: it acts
only on a difference and says whether it changed anything).
"""

from bootstrap.steps import firewall, health, layout, nginx, packages, secret, torchserve, upload_model, venv

# Order matters: the venv needs packages; TorchServe starts only behind the firewall;
# nginx needs the secret; health needs all.
STEPS = (packages, layout, firewall, venv, secret, upload_model, torchserve, nginx, health)
