"""What a stack costs per hour, from the dated price table in `prices.yaml`.

A table in the repo rather than a pricing API: `pulumi preview` stays offline
and deterministic, and the `as_of` date says how old the numbers are.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pulumi
import yaml
from pydantic import BaseModel, ConfigDict

PRICES_PATH = Path(__file__).with_name("prices.yaml")
ANY_REGION = "any"


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    usd: float
    source: str
    # When this entry was read, where that is not the table's `as_of`.
    as_of: datetime.date | None = None


# item (machine type, GPU, disk type) -> region -> price
PriceMap = dict[str, dict[str, Price]]


class CloudPrices(BaseModel):
    model_config = ConfigDict(extra="forbid")

    machine: PriceMap = {}
    instance: PriceMap = {}
    gpu: PriceMap = {}
    disk_gb_month: PriceMap = {}
    static_ip: dict[str, Price] = {}
    # The same address while its VM is stopped (GCP bills a reserved, unused one more).
    static_ip_unused: dict[str, Price] = {}
    # The HTTPS load balancer of a scale-out stack, per hour (region or `any`).
    load_balancer: dict[str, Price] = {}


class PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    as_of: datetime.date
    currency: str
    hours_per_month: float
    gcp: CloudPrices
    aws: CloudPrices


@lru_cache(maxsize=4)
def load_prices(path: Path = PRICES_PATH) -> PriceTable:
    return PriceTable.model_validate(yaml.safe_load(Path(path).read_text()))


@dataclass
class Estimate:
    """An hourly price and what it leaves out (items missing from the table)."""

    usd_per_hour: float = 0.0
    as_of: str = ""
    missing: list[str] = field(default_factory=list)
    lines: list[tuple[str, float]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing

    def add(self, label: str, price: Price | None, factor: float = 1.0) -> None:
        if price is None:
            self.missing.append(label)
            return
        amount = price.usd * factor
        self.usd_per_hour += amount
        self.lines.append((label, amount))

    def rounded(self) -> float | None:
        """The stack output: None when any part is unknown (better than a low guess)."""
        return round(self.usd_per_hour, 4) if self.complete else None


def _lookup(table: PriceMap, item: str, region: str) -> Price | None:
    return table.get(item, {}).get(region)


def _add_disk(
    est: Estimate, prices: PriceTable, cloud: CloudPrices, region: str, disk_gb: int, disk_type: str
) -> None:
    """A boot disk: priced per GB and month, billed by the hour."""
    est.add(
        f"{disk_gb} GB {disk_type}",
        _lookup(cloud.disk_gb_month, disk_type, region),
        disk_gb / prices.hours_per_month,
    )


def gcp_hourly(
    region: str,
    machine_type: str,
    gpu_type: str | None,
    gpu_count: int,
    disk_gb: int,
    disk_type: str = "pd-balanced",
    table: PriceTable | None = None,
) -> Estimate:
    """Machine, GPUs (none when `gpu_type` is None: a CPU stack), boot disk and static IP."""
    prices = table or load_prices()
    gcp = prices.gcp
    est = Estimate(as_of=prices.as_of.isoformat())
    est.add(f"{machine_type} in {region}", _lookup(gcp.machine, machine_type, region))
    if gpu_type is not None:
        est.add(f"{gpu_count} x {gpu_type} in {region}", _lookup(gcp.gpu, gpu_type, region), gpu_count)
    _add_disk(est, prices, gcp, region, disk_gb, disk_type)
    est.add("static IP", gcp.static_ip.get(ANY_REGION))
    return est


def aws_hourly(
    region: str,
    instance_type: str,
    disk_gb: int,
    disk_type: str = "gp3",
    table: PriceTable | None = None,
) -> Estimate:
    prices = table or load_prices()
    aws = prices.aws
    est = Estimate(as_of=prices.as_of.isoformat())
    est.add(f"{instance_type} in {region}", _lookup(aws.instance, instance_type, region))
    _add_disk(est, prices, aws, region, disk_gb, disk_type)
    est.add("Elastic IP", aws.static_ip.get(ANY_REGION))
    return est


def stopped_hourly(
    cloud: str, region: str, disk_gb: int, disk_type: str, table: PriceTable | None = None
) -> Estimate:
    """A stopped VM (idle stop, maxRunHours, a stopped spot VM): its boot disk and static
    address bill on; the machine and its GPUs do not."""
    prices = table or load_prices()
    items: CloudPrices = getattr(prices, cloud)
    est = Estimate(as_of=prices.as_of.isoformat())
    _add_disk(est, prices, items, region, disk_gb, disk_type)
    est.add("static IP of a stopped VM", items.static_ip_unused.get(ANY_REGION))
    return est


def load_balancer_hourly(cloud: str, region: str, table: PriceTable | None = None) -> Estimate:
    """The load balancer's fixed hourly price (traffic-dependent charges are not included)."""
    prices = table or load_prices()
    lb = getattr(prices, cloud).load_balancer
    est = Estimate(as_of=prices.as_of.isoformat())
    est.add(f"{cloud} load balancer in {region}", lb.get(region) or lb.get(ANY_REGION))
    return est


def fleet_hourly(per_replica: Estimate, replicas: int, load_balancer: Estimate) -> Estimate:
    """`replicas` instances (each with its disk and public IP) plus the load balancer."""
    est = Estimate(as_of=per_replica.as_of or load_balancer.as_of)
    est.missing = [*per_replica.missing, *load_balancer.missing]
    est.lines = [(f"{replicas} x {label}", amount * replicas) for label, amount in per_replica.lines]
    est.lines += load_balancer.lines
    est.usd_per_hour = sum(amount for _, amount in est.lines)
    return est


def warn_missing(cost: Estimate) -> Estimate:
    """Say in `pulumi up`'s output which items the table lacks (the output is then None)."""
    if not cost.complete:
        pulumi.log.warn(f"no price in infra/prices.yaml for: {', '.join(cost.missing)}")
    return cost
