"""The dated price table and the hourly estimate."""

from __future__ import annotations

import datetime

import pytest

from infra.pricing import aws_hourly, gcp_hourly, load_prices


def test_table_is_dated_and_every_entry_has_a_source():
    table = load_prices()
    assert isinstance(table.as_of, datetime.date)
    for cloud in (table.gcp, table.aws):
        for section in (cloud.machine, cloud.instance, cloud.gpu, cloud.disk_gb_month):
            for regions in section.values():
                for price in regions.values():
                    assert price.usd > 0
                    assert price.source.startswith("https://")
        for price in cloud.static_ip.values():
            assert price.source.startswith("https://")


def test_gcp_t4_estimate_adds_machine_gpu_disk_and_ip():
    est = gcp_hourly("us-central1", "n1-standard-4", "nvidia-tesla-t4", 1, 100)
    assert est.complete
    assert est.rounded() == pytest.approx(0.189999 + 0.35 + 100 * 0.10 / 730 + 0.005, abs=1e-4)
    assert len(est.lines) == 4


def test_aws_estimates_for_both_gpus():
    m60 = aws_hourly("us-east-1", "g3s.xlarge", 125)
    t4 = aws_hourly("us-east-1", "g4dn.xlarge", 125)
    assert m60.complete and t4.complete
    # The T4 stack is the cheaper one (and the faster).
    assert t4.rounded() < m60.rounded()


def test_unknown_region_gives_no_number_rather_than_a_wrong_one():
    est = aws_hourly("ap-south-2", "g4dn.xlarge", 125)
    assert not est.complete
    assert est.rounded() is None
    assert any("ap-south-2" in item for item in est.missing)
