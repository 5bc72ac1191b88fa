"""A fake Google Cloud API on loopback: Compute Engine v1 and Service Usage v1, over real HTTP.

It answers the REST calls infra/gcp/cloud_api.py makes with the JSON shapes
the public API references document (regions.get `quotas[].metric/limit/usage`
and `zones[]` URLs; projects.get `quotas`; acceleratorTypes/machineTypes
aggregatedList `items` keyed by `zones/ZONE`, with a `warning` for empty
scopes; images.getFromFamily; services.get `state`), and with Google's error
bodies (403 SERVICE_DISABLED / accessNotConfigured, 404 notFound). A `GcpWorld`
says what the account looks like; tests change it to play one failure.

Point the client at it with SYNTHDET_GCP_API_ENDPOINT=<url>.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.loopback import reply, serve_http

COMPUTE = "https://www.googleapis.com/compute/v1"
T4 = "nvidia-tesla-t4"
DLVM_PROJECT = "deeplearning-platform-release"
DLVM_FAMILY = "pytorch-2-9-cu129-ubuntu-2204-nvidia-580"


def _region_zones(region: str, letters: str) -> list[str]:
    return [f"{region}-{letter}" for letter in letters]


@dataclass
class GcpWorld:
    """One project as the fake API shows it; every field is plain data a test may change."""

    project: str = "demo-project"
    number: str = "123456789012"
    enabled: set[str] = field(
        default_factory=lambda: {
            "compute.googleapis.com",
            "storage.googleapis.com",
            "serviceusage.googleapis.com",
        }
    )
    billing: bool = True
    regions: dict[str, list[str]] = field(
        default_factory=lambda: {
            "us-central1": _region_zones("us-central1", "abcf"),
            "us-east1": _region_zones("us-east1", "bcd"),
            "europe-west4": _region_zones("europe-west4", "abc"),
        }
    )
    # region -> metric -> (limit, usage)
    region_quotas: dict[str, dict[str, tuple[float, float]]] = field(
        default_factory=lambda: {
            region: {
                "CPUS": (24, 0),
                "NVIDIA_T4_GPUS": (4, 0),
                "PREEMPTIBLE_NVIDIA_T4_GPUS": (0, 0),
                "STATIC_ADDRESSES": (8, 0),
                "IN_USE_ADDRESSES": (8, 0),
            }
            for region in ("us-central1", "us-east1", "europe-west4")
        }
    )
    project_quotas: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {
            "GPUS_ALL_REGIONS": (1, 0),
            "CPUS_ALL_REGIONS": (32, 0),
            "NETWORKS": (5, 1),
            "FIREWALLS": (200, 4),
        }
    )
    # accelerator type -> zones offering it
    accelerators: dict[str, set[str]] = field(
        default_factory=lambda: {
            T4: {
                "us-central1-a",
                "us-central1-b",
                "us-central1-c",
                "us-central1-f",
                "us-east1-c",
                "us-east1-d",
            }
        }
    )
    # machine type -> zone -> vCPUs
    machine_types: dict[str, dict[str, int]] = field(
        default_factory=lambda: {
            "n1-standard-4": {
                z: 4
                for z in _region_zones("us-central1", "abcf")
                + _region_zones("us-east1", "bcd")
                + _region_zones("europe-west4", "abc")
            }
        }
    )
    # (image project, family) -> image name
    families: dict[tuple[str, str], str] = field(
        default_factory=lambda: {(DLVM_PROJECT, DLVM_FAMILY): f"{DLVM_FAMILY}-v20261001"}
    )
    # (zone, name) -> status
    instances: dict[tuple[str, str], str] = field(default_factory=dict)
    # False: a start is accepted but the VM stays TERMINATED (a zone out of spot capacity).
    start_capacity: bool = True
    requests: list[tuple[str, str]] = field(default_factory=list)

    # ------------------------------------------------------------ the usual failures
    def without_gpu_quota(self) -> GcpWorld:
        """A new project: GPUS_ALL_REGIONS 0 and no T4s in the region."""
        self.project_quotas["GPUS_ALL_REGIONS"] = (0, 0)
        for quotas in self.region_quotas.values():
            quotas["NVIDIA_T4_GPUS"] = (0, 0)
        return self

    def with_api_disabled(self, service: str = "compute.googleapis.com") -> GcpWorld:
        self.enabled.discard(service)
        return self

    def without_gpu_in(self, zone: str) -> GcpWorld:
        for zones in self.accelerators.values():
            zones.discard(zone)
        return self

    def without_image_family(self) -> GcpWorld:
        self.families.clear()
        return self

    def with_networks_full(self) -> GcpWorld:
        limit, _ = self.project_quotas["NETWORKS"]
        self.project_quotas["NETWORKS"] = (limit, limit)
        return self

    def without_billing(self) -> GcpWorld:
        self.billing = False
        return self


class _Handler(BaseHTTPRequestHandler):
    world: GcpWorld
    lock: threading.Lock

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._route("POST")

    # ------------------------------------------------------------ routing
    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        with self.lock:
            self.world.requests.append((method, path))
        if path.startswith("/compute/v1/"):
            self._compute(method, path[len("/compute/v1/") :], query)
        elif path.startswith("/v1/"):
            self._service_usage(path[len("/v1/") :])
        else:
            self._error(404, f"no route for {path}", "notFound")

    def _compute(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        world = self.world
        parts = path.split("/")
        if len(parts) < 2 or parts[0] != "projects":
            self._not_found(path)
            return
        project = parts[1]
        image_project = parts[1] if parts[2:4] == ["global", "images"] else None
        # Image look-ups read another project (the image's); everything else bills this one.
        if image_project is None and project not in (world.project, world.number):
            self._not_found(f"projects/{project}")
            return
        if "compute.googleapis.com" not in world.enabled:
            self._service_disabled("compute.googleapis.com", "Compute Engine API")
            return
        if not world.billing:
            self._billing_disabled()
            return
        rest = parts[2:]
        if not rest:
            self._json(_project(world))
        elif rest[0] == "regions" and len(rest) == 2:
            self._region(rest[1])
        elif rest[:2] == ["aggregated", "acceleratorTypes"]:
            self._aggregated("acceleratorTypes", world.accelerators, query, _accelerator)
        elif rest[0] == "zones" and len(rest) == 4 and rest[2] == "machineTypes":
            self._machine_type(rest[1], rest[3])
        elif rest[:2] == ["aggregated", "machineTypes"]:
            types = {name: set(zones) for name, zones in world.machine_types.items()}
            self._aggregated("machineTypes", types, query, _machine_type)
        elif rest[:3] == ["global", "images", "family"] and len(rest) == 4:
            self._family(project, rest[3])
        elif rest[:2] == ["global", "images"] and len(rest) == 3:
            self._image(project, rest[2])
        elif rest[0] == "zones" and len(rest) >= 4 and rest[2] == "instances":
            self._instance(method, rest[1], rest[3], rest[4:])
        else:
            self._not_found(f"projects/{path}")

    # ------------------------------------------------------------ compute answers
    def _region(self, region: str) -> None:
        world = self.world
        if region not in world.regions:
            self._not_found(f"projects/{world.project}/regions/{region}")
            return
        self._json(
            {
                "kind": "compute#region",
                "id": str(abs(hash(region)) % 10**6),
                "name": region,
                "status": "UP",
                "zones": [f"{COMPUTE}/projects/{world.project}/zones/{z}" for z in world.regions[region]],
                "quotas": _quotas(world.region_quotas.get(region, {})),
                "selfLink": f"{COMPUTE}/projects/{world.project}/regions/{region}",
            }
        )

    def _aggregated(
        self, kind: str, offers: dict[str, set[str]], query: dict[str, list[str]], item: Any
    ) -> None:
        world = self.world
        wanted = _filter_name(query.get("filter", [""])[0])
        all_zones = [z for zones in world.regions.values() for z in zones]
        items: dict[str, Any] = {}
        for zone in all_zones:
            found = [item(world, name, zone) for name, zones in offers.items() if zone in zones]
            found = [f for f in found if wanted is None or f["name"] == wanted]
            if found:
                items[f"zones/{zone}"] = {kind: found}
            else:
                items[f"zones/{zone}"] = {
                    "warning": {
                        "code": "NO_RESULTS_ON_PAGE",
                        "message": f"There are no results for scope 'zones/{zone}' on this page.",
                        "data": [{"key": "scope", "value": f"zones/{zone}"}],
                    }
                }
        singular = kind[:-1]
        self._json(
            {
                "kind": f"compute#{singular}AggregatedList",
                "id": f"projects/{world.project}/aggregated/{kind}",
                "items": items,
                "selfLink": f"{COMPUTE}/projects/{world.project}/aggregated/{kind}",
            }
        )

    def _machine_type(self, zone: str, name: str) -> None:
        world = self.world
        if zone not in world.machine_types.get(name, {}):
            self._not_found(f"projects/{world.project}/zones/{zone}/machineTypes/{name}")
            return
        self._json(_machine_type(world, name, zone))

    def _family(self, project: str, family: str) -> None:
        name = self.world.families.get((project, family))
        if name is None:
            self._not_found(f"projects/{project}/global/images/family/{family}")
            return
        self._json(_image_body(project, name, family))

    def _image(self, project: str, image: str) -> None:
        for (owner, family), name in self.world.families.items():
            if owner == project and name == image:
                self._json(_image_body(project, name, family))
                return
        self._not_found(f"projects/{project}/global/images/{image}")

    def _instance(self, method: str, zone: str, name: str, action: list[str]) -> None:
        world = self.world
        key = (zone, name)
        if key not in world.instances:
            self._not_found(f"projects/{world.project}/zones/{zone}/instances/{name}")
            return
        if method == "POST" and action == ["start"]:
            with self.lock:
                if world.start_capacity:
                    world.instances[key] = "RUNNING"
            self._json(
                {
                    "kind": "compute#operation",
                    "name": "operation-start-1",
                    "operationType": "start",
                    "status": "DONE",
                    "progress": 100,
                    "zone": f"{COMPUTE}/projects/{world.project}/zones/{zone}",
                    "targetLink": f"{COMPUTE}/projects/{world.project}/zones/{zone}/instances/{name}",
                    "selfLink": f"{COMPUTE}/projects/{world.project}/zones/{zone}/operations/"
                    "operation-start-1",
                }
            )
            return
        self._json(
            {
                "kind": "compute#instance",
                "name": name,
                "status": world.instances[key],
                "zone": f"{COMPUTE}/projects/{world.project}/zones/{zone}",
                "selfLink": f"{COMPUTE}/projects/{world.project}/zones/{zone}/instances/{name}",
            }
        )

    # ------------------------------------------------------------ Service Usage
    def _service_usage(self, path: str) -> None:
        world = self.world
        match = re.fullmatch(r"projects/([^/]+)/services/([^/:]+)", path)
        if match is None:
            self._error(404, f"Method not found: {path}", "notFound")
            return
        if "serviceusage.googleapis.com" not in world.enabled:
            self._service_disabled("serviceusage.googleapis.com", "Service Usage API")
            return
        service = match[2]
        state = "ENABLED" if service in world.enabled else "DISABLED"
        self._json(
            {
                "name": f"projects/{world.number}/services/{service}",
                "config": {"name": service, "title": service},
                "state": state,
                "parent": f"projects/{world.number}",
            }
        )

    # ------------------------------------------------------------ errors, as Google sends them
    def _service_disabled(self, service: str, title: str) -> None:
        number = self.world.number
        activation = f"https://console.developers.google.com/apis/api/{service}/overview?project={number}"
        message = (
            f"{title} has not been used in project {number} before or it is disabled. Enable it by visiting "
            f"{activation} then retry. If you enabled this API recently, wait a few minutes for the action "
            "to propagate to our systems and retry."
        )
        self._json(
            {
                "error": {
                    "code": 403,
                    "message": message,
                    "errors": [
                        {
                            "message": message,
                            "domain": "usageLimits",
                            "reason": "accessNotConfigured",
                            "extendedHelp": "https://console.developers.google.com",
                        }
                    ],
                    "status": "PERMISSION_DENIED",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "SERVICE_DISABLED",
                            "domain": "googleapis.com",
                            "metadata": {
                                "service": service,
                                "consumer": f"projects/{number}",
                                "activationUrl": activation,
                                "serviceTitle": title,
                                "containerInfo": number,
                            },
                        },
                        {
                            "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                            "locale": "en-US",
                            "message": message,
                        },
                        {
                            "@type": "type.googleapis.com/google.rpc.Help",
                            "links": [
                                {"description": "Google developers console API activation", "url": activation}
                            ],
                        },
                    ],
                }
            },
            status=403,
        )

    def _billing_disabled(self) -> None:
        number = self.world.number
        message = (
            f"This API method requires billing to be enabled. Please enable billing on project #{number} by "
            f"visiting https://console.developers.google.com/billing/enable?project={number} then retry."
        )
        self._json(
            {
                "error": {
                    "code": 403,
                    "message": message,
                    "errors": [{"message": message, "domain": "usageLimits", "reason": "billingNotEnabled"}],
                    "status": "PERMISSION_DENIED",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                            "reason": "BILLING_DISABLED",
                            "domain": "googleapis.com",
                            "metadata": {
                                "consumer": f"projects/{number}",
                                "service": "compute.googleapis.com",
                            },
                        }
                    ],
                }
            },
            status=403,
        )

    def _not_found(self, resource: str) -> None:
        self._error(404, f"The resource '{resource}' was not found", "notFound")

    def _error(self, code: int, message: str, reason: str) -> None:
        status = {404: "NOT_FOUND", 403: "PERMISSION_DENIED", 400: "INVALID_ARGUMENT"}.get(code, "UNKNOWN")
        self._json(
            {
                "error": {
                    "code": code,
                    "message": message,
                    "errors": [{"message": message, "domain": "global", "reason": reason}],
                    "status": status,
                }
            },
            status=code,
        )

    def _json(self, body: dict[str, Any], status: int = 200) -> None:
        reply(self, status, "application/json; charset=UTF-8", json.dumps(body).encode())


def _project(world: GcpWorld) -> dict[str, Any]:
    return {
        "kind": "compute#project",
        "id": world.number,
        "name": world.project,
        "quotas": _quotas(world.project_quotas),
        "selfLink": f"{COMPUTE}/projects/{world.project}",
    }


def _quotas(quotas: dict[str, tuple[float, float]]) -> list[dict[str, Any]]:
    return [{"metric": metric, "limit": limit, "usage": usage} for metric, (limit, usage) in quotas.items()]


def _accelerator(world: GcpWorld, name: str, zone: str) -> dict[str, Any]:
    return {
        "kind": "compute#acceleratorType",
        "id": "10001",
        "name": name,
        "description": "NVIDIA T4",
        "zone": f"{COMPUTE}/projects/{world.project}/zones/{zone}",
        "maximumCardsPerInstance": 4,
        "selfLink": f"{COMPUTE}/projects/{world.project}/zones/{zone}/acceleratorTypes/{name}",
    }


def _machine_type(world: GcpWorld, name: str, zone: str) -> dict[str, Any]:
    return {
        "kind": "compute#machineType",
        "id": "3004",
        "name": name,
        "guestCpus": world.machine_types[name][zone],
        "memoryMb": 15360,
        "zone": zone,  # machine types name their zone, not its URL
        "selfLink": f"{COMPUTE}/projects/{world.project}/zones/{zone}/machineTypes/{name}",
    }


def _image_body(project: str, name: str, family: str) -> dict[str, Any]:
    return {
        "kind": "compute#image",
        "id": "4004",
        "name": name,
        "family": family,
        "status": "READY",
        "diskSizeGb": "50",
        "selfLink": f"{COMPUTE}/projects/{project}/global/images/{name}",
    }


def _filter_name(expression: str) -> str | None:
    match = re.search(r'name\s*(?:=|eq)\s*"?([A-Za-z0-9._-]+)"?', expression)
    return match[1] if match else None


@contextmanager
def fake_gcp_api(world: GcpWorld | None = None) -> Iterator[tuple[str, GcpWorld]]:
    """Serve the fake on 127.0.0.1 (a free port); yield its base URL and the world it shows."""
    world = world or GcpWorld()
    handler = type("FakeGcpHandler", (_Handler,), {"world": world, "lock": threading.Lock()})
    with serve_http(handler, poll_interval=0.05) as url:
        yield url, world
