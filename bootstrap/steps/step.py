"""What a step is: a function whose parameters say what it needs, and what it leaves behind.

A step's `apply` takes, by type, any of: `Run` (the run's inputs), `HostState`
(the record kept on the host) and the outputs of other steps (small frozen
dataclasses, e.g. `Secret`); it returns `Done[X]`, X being its own output (or
None). Those annotations are the declaration: `needs` and `yields` are read
from them, and `plan` orders the steps so that each runs after the steps
whose outputs it takes. What a step creates on the host is its `Footprint`;
undeploy removes the union of all of them.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from bootstrap.steps.base import HostState, Run

T = TypeVar("T")


@dataclass(frozen=True)
class Done(Generic[T]):
    """A step's answer: did it change the host, a line for people, and its output."""

    # None: the step only looks (a check such as health): "changed" means nothing for it.
    changed: bool | None
    detail: str
    output: T


def _nothing_to_restore(state: HostState) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class Footprint:
    """What a step leaves on the host, so that undeploy can take it away again.

    Undeploy removes the union of every step's footprint, later steps' first,
    phase by phase: units, nftables tables, files, `restore`, trees, accounts,
    packages. Paths are absolute; `files` may hold shell globs.
    """

    # systemd units it installs and enables: stopped, disabled and forgotten (their unit
    # files belong in `files`).
    units: tuple[str, ...] = ()
    # nftables tables (family inet) it loads.
    nft_tables: tuple[str, ...] = ()
    # Files and symlinks it places outside `trees`.
    files: tuple[str, ...] = ()
    # Directories that are wholly the deploy's: removed with everything in them.
    trees: tuple[str, ...] = ()
    # Directories it may make in the system's own places: removed only when empty.
    shared_dirs: tuple[str, ...] = ()
    # System accounts it may create; removed only when HostState.created_users names
    # them and they are still system accounts.
    accounts: tuple[str, ...] = ()
    # It may apt-install packages (recorded in HostState.apt_installed, purged on undeploy
    # unless the packages are kept).
    apt_packages: bool = False
    # Shell run once the files are gone: put back what the step took away, reload a
    # service that read its files. Given the host's record of what deploy did.
    restore: Callable[[HostState], tuple[str, ...]] = _nothing_to_restore


class PlanError(ValueError):
    """The steps' declarations do not fit together (a missing or doubled output, a cycle)."""


@dataclass(frozen=True)
class Step:
    """One idempotent deploy step; see bootstrap/steps/__init__.py for how to add one."""

    name: str
    apply: Callable[..., Done[Any]]
    footprint: Footprint = field(default_factory=Footprint)
    # Write the host state after this step (and after it fails half way). False only for a
    # step that may run before the state's folder exists (packages runs before layout).
    records_state: bool = True

    def __post_init__(self) -> None:
        self.parameters()  # a step whose annotations cannot be read fails at import
        self.yields  # noqa: B018 - same for its return annotation

    def parameters(self) -> dict[str, type]:
        """Parameter name -> the type that is passed for it."""
        hints = typing.get_type_hints(self.apply)
        params = inspect.signature(self.apply).parameters
        missing = [name for name in params if name not in hints]
        if missing:
            raise PlanError(f"step {self.name}: parameters {missing} need a type (what is passed)")
        return {name: hints[name] for name in params}

    @property
    def needs(self) -> tuple[type, ...]:
        """The other steps' outputs this one takes."""
        return tuple(kind for kind in self.parameters().values() if kind not in (Run, HostState))

    @property
    def yields(self) -> type | None:
        """The type of this step's output (None: it yields nothing)."""
        returns = typing.get_type_hints(self.apply).get("return")
        if typing.get_origin(returns) is not Done:
            raise PlanError(f"step {self.name}: apply must be annotated to return Done[...]")
        (output,) = typing.get_args(returns)
        return None if output is type(None) else output

    def call(self, run: Run, state: HostState, outputs: Outputs) -> Done[Any]:
        """Run the step with what it declared it needs."""
        given: dict[type, object] = {Run: run, HostState: state}
        args = {
            name: given[kind] if kind in given else outputs[kind] for name, kind in self.parameters().items()
        }
        return self.apply(**args)


class Outputs:
    """The outputs of the steps run so far, looked up by type."""

    def __init__(self) -> None:
        self._by_type: dict[type, object] = {}

    def add(self, value: object) -> None:
        self._by_type[type(value)] = value

    def __getitem__(self, kind: type[T]) -> T:
        value = self._by_type.get(kind)
        if not isinstance(value, kind):
            raise KeyError(f"no step has yielded {kind.__name__} yet")
        return value

    def __contains__(self, kind: type) -> bool:
        return kind in self._by_type


def plan(steps: Iterable[Step]) -> tuple[Step, ...]:
    """The steps in an order where each runs after those whose outputs it needs.

    Among steps that could run next, the one listed first goes first, so the
    order is stable and reads like the list. Raises PlanError for a need no step
    yields, an output two steps yield, or a cycle.
    """
    steps = tuple(steps)
    producers: dict[type, Step] = {}
    for step in steps:
        kind = step.yields
        if kind is None:
            continue
        if kind in producers:
            raise PlanError(f"steps {producers[kind].name} and {step.name} both yield {kind.__name__}")
        producers[kind] = step
    for step in steps:
        for kind in step.needs:
            if kind not in producers:
                raise PlanError(f"step {step.name} needs {kind.__name__}, which no step yields")
    ordered: list[Step] = []
    available: set[type] = set()
    pending = list(steps)
    while pending:
        ready = next((s for s in pending if all(kind in available for kind in s.needs)), None)
        if ready is None:
            stuck = ", ".join(f"{s.name} (needs {', '.join(k.__name__ for k in s.needs)})" for s in pending)
            raise PlanError(f"the steps wait on each other: {stuck}")
        ordered.append(ready)
        pending.remove(ready)
        if ready.yields is not None:
            available.add(ready.yields)
    return tuple(ordered)
