"""The step API: the order follows from what steps need, a step gets what it declares, the host
state is recorded as steps go; and the small types that cross the library's boundary."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from bootstrap.api import DeployOptions, DeployResult, PipSource
from bootstrap.steps import ORDER, STEPS
from bootstrap.steps.base import HostState, Run, render_template
from bootstrap.steps.layout import Layout
from bootstrap.steps.step import Done, Outputs, PlanError, Step, plan
from serving.settings import ServingSettings
from tests.support.fake_host import SECRET, make_run


def test_steps_run_in_dependency_order() -> None:
    names = [step.name for step in ORDER]
    assert names == [
        "packages",
        "layout",
        "firewall",
        "venv",
        "url-secret",
        "upload-model",
        "torchserve",
        "idle-stop",
        "nginx",
        "certificate",
        "health",
    ]
    # Each step runs after every step whose output it takes.
    done: set[type] = set()
    for step in ORDER:
        assert set(step.needs) <= done, step.name
        if step.yields is not None:
            done.add(step.yields)


def test_what_each_step_needs_and_yields() -> None:
    declared = {
        step.name: ({k.__name__ for k in step.needs}, getattr(step.yields, "__name__", None))
        for step in STEPS
    }
    assert declared == {
        "packages": (set(), "SystemPackages"),
        "layout": (set(), "Layout"),
        "firewall": ({"SystemPackages", "Layout"}, "Firewall"),
        "venv": ({"SystemPackages", "Layout"}, "Venv"),
        "url-secret": ({"Layout"}, "Secret"),
        "upload-model": ({"Layout"}, "ModelStore"),
        "torchserve": ({"Firewall", "Venv", "ModelStore"}, "TorchServe"),
        "idle-stop": ({"Layout"}, "IdleStop"),
        "nginx": ({"SystemPackages", "Layout", "Secret", "IdleStop"}, "Tls"),
        "certificate": ({"Venv", "Tls"}, "ServedCertificate"),
        "health": ({"TorchServe", "Secret", "ServedCertificate"}, None),
    }


# Small made-up steps for the planner.
@dataclass(frozen=True)
class A:
    value: int


@dataclass(frozen=True)
class B:
    value: int


def make_a(run: Run) -> Done[A]:
    return Done(True, "a", A(1))


def make_b(a: A) -> Done[B]:
    return Done(False, "b", B(a.value + 1))


def use_b(state: HostState, b: B) -> Done[None]:
    state.loaded_models["b"] = str(b.value)
    return Done(False, "used", None)


def needs_b_makes_a(b: B) -> Done[A]:
    return Done(False, "", A(b.value))


def test_the_order_follows_the_needs_whatever_the_list_order() -> None:
    steps = (Step("use", use_b), Step("b", make_b), Step("a", make_a))
    assert [s.name for s in plan(steps)] == ["a", "b", "use"]
    # Steps free to run keep their list order.
    free = (Step("first", use_b), Step("a", make_a), Step("b", make_b), Step("last", use_b_too))
    assert [s.name for s in plan(free[1:])] == ["a", "b", "last"]
    assert [s.name for s in plan((free[3], free[1], free[2], free[0]))] == ["a", "b", "last", "first"]


def use_b_too(b: B) -> Done[None]:
    return Done(False, "", None)


def test_a_parameter_without_a_type_is_refused() -> None:
    def untyped(run) -> Done[None]:  # type: ignore[no-untyped-def]
        return Done(False, "", None)

    with pytest.raises(PlanError, match=r"step untyped: parameters \['run'\] need a type"):
        Step("untyped", untyped)


def test_a_need_no_step_yields_is_an_error() -> None:
    with pytest.raises(PlanError, match="step use needs B, which no step yields"):
        plan((Step("a", make_a), Step("use", use_b)))


def test_two_producers_of_one_output_are_an_error() -> None:
    with pytest.raises(PlanError, match="steps a and again both yield A"):
        plan((Step("a", make_a), Step("again", make_a)))


def test_steps_waiting_on_each_other_are_an_error() -> None:
    with pytest.raises(PlanError, match=r"wait on each other: b \(needs A\), cycle \(needs B\)"):
        plan((Step("b", make_b), Step("cycle", needs_b_makes_a)))


def test_a_step_must_say_what_it_returns() -> None:
    def no_done(run: Run) -> int:
        return 1

    with pytest.raises(PlanError, match="step bad: apply must be annotated to return Done"):
        Step("bad", no_done)


def test_a_step_is_given_exactly_what_it_declares() -> None:
    outputs = Outputs()
    state = HostState()
    run = make_run()
    with pytest.raises(KeyError, match="no step has yielded A yet"):
        Step("b", make_b).call(run, state, outputs)
    outputs.add(Step("a", make_a).call(run, state, outputs).output)
    outputs.add(Step("b", make_b).call(run, state, outputs).output)
    assert outputs[B] == B(2)
    assert Step("use", use_b).call(run, state, outputs).detail == "used"
    assert state.loaded_models == {"b": "2"}


def test_every_step_that_records_state_runs_after_the_layout_made_its_folder() -> None:
    producers = {step.yields: step for step in ORDER if step.yields is not None}

    def upstream(step: Step) -> set[type]:
        seen: set[type] = set()
        todo = list(step.needs)
        while todo:
            kind = todo.pop()
            if kind not in seen:
                seen.add(kind)
                todo.extend(producers[kind].needs)
        return seen

    for step in ORDER:
        if step.records_state:
            assert step.yields is Layout or Layout in upstream(step), step.name
    assert [step.name for step in ORDER if not step.records_state] == ["packages"]


def test_run_workers_follow_the_hardware() -> None:
    assert make_run().workers_per_model == 1
    gpus = tuple(SimpleNamespace() for _ in range(2))
    assert make_run(gpus=gpus).workers_per_model == 2
    with pytest.raises(ValueError, match="filled in for the host"):
        Run(
            conn=make_run().conn,
            facts=make_run().facts,
            models=(),
            options=DeployOptions(),
            public_address="h",
        )


def test_host_state_round_trip_tolerates_garbage() -> None:
    state = HostState(apt_installed=["nginx"], loaded_models={"synthdet": "ab" * 32})
    assert HostState.from_json(state.to_json()) == state
    assert HostState.from_json(None) == HostState()
    assert HostState.from_json("{not json") == HostState()
    assert HostState.from_json('{"future_field": 1}') == HostState()


def test_render_template_requires_every_value() -> None:
    with pytest.raises(KeyError, match="secret"):
        render_template("nginx-model-location.conf", name="synthdet")


def test_deploy_result_json() -> None:
    result = DeployResult(
        endpoints={"synthdet": "https://h/s/predictions/synthdet"},
        endpoint="https://h/s/predictions/synthdet",
        cert_sha256="AB:CD",
        changed=False,
        public_address="h",
        steps=[("packages", False)],
        host={"gpu": None},
    )
    data = result.to_dict()
    assert data["endpoint"] == result.endpoint and data["cert_sha256"] == "AB:CD"
    assert data["public_ip"] == "h" and data["steps"] == [{"name": "packages", "changed": False}]


def test_deploy_options_validation() -> None:
    with pytest.raises(ValueError, match="tls_key"):
        DeployOptions(tls_cert=Path("c.pem"))
    with pytest.raises(ValueError, match="port"):
        DeployOptions(public_port=0)


def test_deploy_options_cross_boundaries_as_plain_json() -> None:
    options = DeployOptions(
        public_port=8443,
        url_secret=SECRET,
        tls_cert=Path("/c.pem"),
        tls_key=Path("/k.pem"),
        pip=PipSource(find_links="http://10.0.0.1:8000/", trusted_hosts=("10.0.0.1",)),
        serving=ServingSettings(workers=2, warmup_sizes=((320, 240),)),
        balancer_cidrs=("130.211.0.0/22",),
        torch_version="2.8.0",
    )
    data = json.loads(json.dumps(options.to_dict()))  # what Pulumi state and boot.json hold
    assert DeployOptions.from_dict(data) == options
    assert DeployOptions.from_dict({}) == DeployOptions()
    with pytest.raises(ValueError, match="unknown deploy options"):
        DeployOptions.from_dict({"color": "blue"})
    # Only what was set crosses: the rest is chosen where the hardware is known.
    assert data["serving"] == {"workers": 2, "warmup_sizes": [[320, 240]]}
    assert DeployOptions.from_dict(data).serving.model_fields_set == {"workers", "warmup_sizes"}
