"""The deploy steps: each says what it needs, what it yields and what it leaves on the host.

How to add a step (say, `watchdog`):

1. Write `bootstrap/steps/watchdog.py` with an idempotent function that acts only
   on a difference and says whether it changed anything::

       @dataclass(frozen=True)
       class Watchdog:                      # what it yields (its output type), if anything
           unit: str

       def apply(run: Run, state: HostState, firewall: Firewall) -> Done[Watchdog]:
           changed = ensure_file(run, WATCHDOG_UNIT_FILE, render_unit(firewall.unit))
           ...
           return Done(changed, "a line for people", Watchdog(WATCHDOG_UNIT_NAME))

       STEP = Step("watchdog", apply, Footprint(units=(...,), files=(WATCHDOG_UNIT_FILE,)))

   Its parameters are its inputs, by type: `Run` (the run's inputs: connection,
   host facts, models, options with serving settings already chosen for the
   hardware, public address, archives, progress), `HostState` (the record kept on
   the host; change it to note what undeploy or the next run must know) and any
   other step's output type (`SystemPackages`, `Layout`, `Firewall`, `Venv`,
   `Secret`, `ModelStore`, `TorchServe`, `Tls`, `ServedCertificate`). Taking an output is what orders a
   step after its producer, also when the value is not read (`layout: Layout`:
   "my files go in the layout's directories"). Its return annotation,
   `Done[X]` or `Done[None]`, says what it yields.
2. Declare in its `Footprint` everything it creates outside the layout's trees
   (/opt/synthdet, /var/lib/synthdet, /var/log/synthdet, /etc/synthdet): files,
   units, nftables tables, directories in the system's own places, accounts,
   apt packages, and what to put back (`restore`). Undeploy removes the union of
   all footprints; tests/unit/test_step_footprints.py fails for a path a step
   writes that no footprint covers.
3. Add `watchdog.STEP` to `STEPS` below. Where it runs follows from what it
   needs (`plan`); among steps that could run at the same point, list order wins.
4. Test it on its own against `tests.support.fake_host` (tests/unit/test_step_*.py).

The host state is written after every step that `records_state` (all but
`packages`, which runs before the state's folder exists), also when it fails.
"""

from bootstrap.steps import (
    acme,
    firewall,
    health,
    idle_stop,
    layout,
    nginx,
    packages,
    secret,
    torchserve,
    upload_model,
    venv,
)
from bootstrap.steps.step import Step, plan

STEPS: tuple[Step, ...] = (
    packages.STEP,
    layout.STEP,
    firewall.STEP,
    venv.STEP,
    secret.STEP,
    upload_model.STEP,
    torchserve.STEP,
    idle_stop.STEP,
    nginx.STEP,
    acme.STEP,
    health.STEP,
)
# The order they run in (a step listed here whose needs cannot be met fails at import).
ORDER: tuple[Step, ...] = plan(STEPS)
