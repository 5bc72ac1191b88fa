"""docs/pulumi.md's "Your first `pulumi up`": every command it quotes exists, every key it names is a
stack key, and the stopped-VM costs it gives follow from the price table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.support.doc_commands import problems, quoted_commands

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "pulumi.md"


def section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def first_up() -> str:
    return section("Your first `pulumi up`")


# The quoted commands are read and checked by one mechanism for every document
# (tests/support/doc_commands.py; all of pulumi.md: tests/unit/test_doc_commands.py).


def test_the_section_quotes_synthdet_commands() -> None:
    names = {quote.words[0] for quote in quoted_commands(first_up())}
    assert {"check", "up", "deploy"} <= names


@pytest.mark.parametrize("where", ["Your first `pulumi up`", "Deploy", "Change, update, stop, destroy"])
def test_every_quoted_synthdet_command_and_option_exists(where: str) -> None:
    quotes = quoted_commands(section(where), f"docs/pulumi.md ({where})")
    assert [problem for quote in quotes for problem in problems(quote)] == []


def test_the_readme_cloud_section_leads_with_the_check() -> None:
    readme = (REPO / "README.md").read_text()
    clouds = readme[readme.index("## Clouds and GPUs") :]
    assert clouds.index("synthdet check --stack") < clouds.index("pulumi up")
    quotes = quoted_commands(clouds.split("\n## ")[0])
    assert quotes and [problem for quote in quotes for problem in problems(quote)] == []


def test_every_stack_key_it_names_is_documented_in_pulumi_yaml() -> None:
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    declared = {f"synthdet:{key}" for key in project["config"]} | {"gcp:zone", "gcp:project", "aws:region"}
    named = set(re.findall(r"\b(?:synthdet|gcp|aws):[a-zA-Z]+\b", first_up()))
    assert named and named <= declared, named - declared


def test_it_has_an_entry_for_each_of_the_seven_failures() -> None:
    entries = re.findall(r"^(\d)\. \*\*(.+?)\*\*", first_up(), flags=re.M)
    assert [number for number, _ in entries] == ["1", "2", "3", "4", "5", "6", "7"]
    titles = " | ".join(title for _, title in entries)
    for words in ("GPU quota", "capacity", "API", "SSH", "image", "domain", "Networks quota"):
        assert words in titles


def test_the_stopped_costs_follow_from_the_price_table() -> None:
    prices = yaml.safe_load((REPO / "infra" / "prices.yaml").read_text())
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    disk_gb, hours = project["config"]["diskSizeGb"]["default"], prices["hours_per_month"]
    gcp_disk = prices["gcp"]["disk_gb_month"]["pd-balanced"]["us-central1"]["usd"] * disk_gb
    aws_disk = prices["aws"]["disk_gb_month"]["gp3"]["us-east-1"]["usd"] * disk_gb
    aws_ip = prices["aws"]["static_ip"]["any"]["usd"] * hours
    costs = section("What it costs")
    assert f"as of {prices['as_of']}" in costs
    assert f"pd-balanced ${gcp_disk:.2f}" in costs
    assert f"gp3 ${aws_disk:.2f} | Elastic IP ${aws_ip:.2f} | ${aws_disk + aws_ip:.2f}" in costs
