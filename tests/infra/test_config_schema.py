"""Pulumi.yaml documents every key with its default; infra/config.py must agree."""

from __future__ import annotations

import pytest
import yaml

from infra.config import StackConfig
from tests.infra.harness import PROJECT_FILE, stack_config, stack_names

PROJECT = yaml.safe_load(PROJECT_FILE.read_text())
DECLARED = PROJECT["config"]
# Project config types Pulumi accepts; keys without one are structured (objects).
PULUMI_TYPES = {str: "string", int: "integer", bool: "boolean", tuple: "array"}


def model_fields() -> dict[str, object]:
    return {(f.alias or name): f for name, f in StackConfig.model_fields.items()}


def test_project_layout():
    assert PROJECT["name"] == "synthdet"
    assert PROJECT["runtime"] == {"name": "python", "options": {"virtualenv": ".venv"}}
    assert PROJECT["main"] == "infra/"
    assert PROJECT["stackConfigDir"] == "stacks"


def test_same_keys_in_project_file_and_model():
    assert set(DECLARED) == set(model_fields())


@pytest.mark.parametrize("key", sorted(DECLARED))
def test_every_key_is_documented(key):
    assert len(DECLARED[key].get("description", "")) > 20


@pytest.mark.parametrize("key", sorted(DECLARED))
def test_defaults_agree(key):
    field = model_fields()[key]
    declared = DECLARED[key]
    if field.is_required():
        assert "default" not in declared, f"{key} is required in config.py"
        return
    default = field.get_default(call_default_factory=True)
    expected = list(default) if isinstance(default, tuple) else default
    assert declared["default"] == expected


@pytest.mark.parametrize("key", sorted(DECLARED))
def test_declared_types_match(key):
    field = model_fields()[key]
    declared = DECLARED[key]
    annotation = getattr(field.annotation, "__origin__", field.annotation)
    if annotation is dict:
        assert "type" not in declared  # objects are declared untyped
        return
    expected = PULUMI_TYPES.get(annotation, "string")  # Literal[...] is a string
    assert declared["type"] == expected
    if expected == "array":
        assert declared["items"] == {"type": "string"}


@pytest.mark.parametrize("stack", stack_names())
def test_stack_files_only_use_declared_keys(stack):
    for key in stack_config(stack):
        namespace, _, name = key.partition(":")
        assert namespace in {"synthdet", "gcp", "aws"}, key
        if namespace == "synthdet":
            assert name in DECLARED, key


@pytest.mark.parametrize("stack", stack_names())
def test_stack_files_do_not_pin_secrets_or_users_paths(stack):
    config = stack_config(stack)
    assert "synthdet:model" not in config  # the user's own path
    assert "synthdet:sshAllowedCidrs" not in config  # stays "self" unless the user widens it
