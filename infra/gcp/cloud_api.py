"""Google Cloud's own APIs, read directly (not through Pulumi): quotas, zones, images, VMs.

Used by the pre-flight check (`synthdet check`, and the program at preview)
and meant for anything else that must ask Compute Engine a question outside a
Pulumi run (start a stopped VM, read its state). It imports nothing else of
the project, so any side can use it.

- Credentials: Application Default Credentials (`gcloud auth
  application-default login`, a service-account key in
  GOOGLE_APPLICATION_CREDENTIALS, or the VM's own account), or the key JSON in
  GOOGLE_CREDENTIALS that Pulumi's GCP provider also reads.
- Every call is bounded: a timeout, no retries. A check that hangs is worse
  than one that says "offline".
- `SYNTHDET_GCP_API_ENDPOINT=http://127.0.0.1:PORT` sends every call (Compute
  Engine and Service Usage alike: their paths differ) to that server over the
  REST transport, unauthenticated: the one switch for emulators and tests.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ENDPOINT_ENV = "SYNTHDET_GCP_API_ENDPOINT"
# Where Pulumi's GCP provider also looks for a key (JSON text or a file path) and a project.
CREDENTIALS_ENV = "GOOGLE_CREDENTIALS"
PROJECT_ENVS = ("GOOGLE_PROJECT", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT")
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
COMPUTE_API = "compute.googleapis.com"
STORAGE_API = "storage.googleapis.com"
TIMEOUT_S = 15.0

T = TypeVar("T")


class GcpApiError(Exception):
    """A call failed; the message is one line a user can act on."""


class NotLoggedIn(GcpApiError):
    pass


class Offline(GcpApiError):
    pass


class ApiDisabled(GcpApiError):
    def __init__(self, message: str, service: str) -> None:
        super().__init__(message)
        self.service = service


class BillingDisabled(GcpApiError):
    pass


class PermissionDenied(GcpApiError):
    pass


class NotFound(GcpApiError):
    pass


@dataclass(frozen=True)
class Quota:
    metric: str
    limit: float
    usage: float

    @property
    def free(self) -> float:
        return self.limit - self.usage


@dataclass(frozen=True)
class RegionInfo:
    name: str
    zones: list[str]  # short names, e.g. us-central1-a
    quotas: dict[str, Quota] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageInfo:
    name: str
    self_link: str
    status: str
    deprecated: str  # "" (current), DEPRECATED, OBSOLETE or DELETED


@dataclass(frozen=True)
class InstanceInfo:
    name: str
    zone: str
    status: str  # PROVISIONING, STAGING, RUNNING, STOPPING, STOPPED, SUSPENDED, TERMINATED ...


def short_name(url_or_name: str) -> str:
    """`https://.../zones/us-central1-a` or `zones/us-central1-a` -> `us-central1-a`."""
    return url_or_name.rstrip("/").rsplit("/", 1)[-1]


def endpoint_override() -> str | None:
    return os.environ.get(ENDPOINT_ENV) or None


def project_from_environment() -> str | None:
    return next((os.environ[name] for name in PROJECT_ENVS if os.environ.get(name)), None)


class _BoundedRequest:
    """google-auth's transport, with a timeout on every token request (its default is 120 s)."""

    def __init__(self, timeout_s: float) -> None:
        from google.auth.transport.requests import Request

        self._request = Request()
        self._timeout_s = timeout_s

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = min(float(kwargs.get("timeout") or self._timeout_s), self._timeout_s)
        return self._request(*args, **kwargs)


def load_credentials(timeout_s: float = TIMEOUT_S, key: str | None = None) -> tuple[Any, str | None]:
    """(credentials, the project they name if any), refreshed once with a bounded timeout.

    `key`: a service-account key (JSON text or a file), as the stack's `gcp:credentials`."""
    import google.auth
    from google.auth import exceptions as auth_errors

    if endpoint_override():
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials(), None
    try:
        credentials, project = _service_account_key(key) or google.auth.default(scopes=SCOPES)
    except auth_errors.DefaultCredentialsError as exc:
        raise NotLoggedIn(
            "no Google credentials found: run `gcloud auth application-default login` "
            f"(or point GOOGLE_APPLICATION_CREDENTIALS at a service-account key) ({_first_line(exc)})"
        ) from None
    try:
        credentials.refresh(_BoundedRequest(timeout_s))
    except auth_errors.TransportError as exc:
        raise Offline(f"cannot reach Google's sign-in service (offline?): {_first_line(exc)}") from None
    except auth_errors.RefreshError as exc:
        raise NotLoggedIn(
            "Google refused the Application Default Credentials (expired or revoked): run "
            f"`gcloud auth application-default login` again ({_first_line(exc)})"
        ) from None
    return credentials, project


def _service_account_key(key: str | None) -> tuple[Any, str | None] | None:
    """A key given (gcp:credentials) or GOOGLE_CREDENTIALS (JSON text or a path to it): what
    Pulumi's provider reads, e.g. in CI."""
    value = (key or os.environ.get(CREDENTIALS_ENV, "")).strip()
    if not value:
        return None
    from google.oauth2 import service_account

    try:
        info = json.loads(value if value.startswith("{") else Path(value).expanduser().read_text())
        credentials = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
    except (OSError, ValueError) as exc:
        raise NotLoggedIn(
            f"gcp:credentials / {CREDENTIALS_ENV} is not a service-account key (JSON text or a file): {exc}"
        ) from None
    return credentials, info.get("project_id")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def translate(exc: BaseException, what: str) -> GcpApiError:
    """A client library exception as one of ours, with a one-line message."""
    from google.api_core import exceptions as api_errors
    from google.auth import exceptions as auth_errors

    if isinstance(exc, GcpApiError):
        return exc
    if isinstance(exc, api_errors.GoogleAPICallError):
        return _translate_call_error(exc, what)
    if isinstance(exc, auth_errors.RefreshError):
        return NotLoggedIn(f"{what}: Google refused the credentials: {_first_line(exc)}")
    if isinstance(exc, (auth_errors.TransportError, OSError)) or _is_requests_network_error(exc):
        return Offline(f"{what}: cannot reach Google's APIs (offline?): {_first_line(exc)}")
    return GcpApiError(f"{what}: {type(exc).__name__}: {_first_line(exc)}")


def _is_requests_network_error(exc: BaseException) -> bool:
    try:
        import requests
    except ImportError:  # pragma: no cover - google-auth's transport needs it
        return False
    return isinstance(exc, (requests.ConnectionError, requests.Timeout))


def _translate_call_error(exc: Any, what: str) -> GcpApiError:
    # api-core prefixes the request ("GET https://...: "): the user needs Google's words only.
    message = re.sub(r"^[A-Z]+ \S+: ", "", _first_line(Exception(exc.message or str(exc))))
    reasons = {exc.reason or ""} | {
        str(e.get("reason", "")) for e in (exc.errors or []) if isinstance(e, dict)
    }
    metadata = exc.metadata or {}
    if reasons & {"SERVICE_DISABLED", "accessNotConfigured"}:
        service = metadata.get("service") or _service_in(message) or COMPUTE_API
        return ApiDisabled(f"{what}: {message}", service)
    if reasons & {"BILLING_DISABLED", "billingNotEnabled", "UREQ_PROJECT_BILLING_NOT_FOUND"} or (
        "billing" in message.lower() and exc.code == 403
    ):
        return BillingDisabled(f"{what}: {message}")
    if exc.code == 401:
        return NotLoggedIn(f"{what}: {message}")
    if exc.code == 403:
        return PermissionDenied(f"{what}: {message}")
    if exc.code == 404:
        return NotFound(f"{what}: {message}")
    return GcpApiError(f"{what}: HTTP {exc.code}: {message}")


def _service_in(message: str) -> str | None:
    for word in message.replace("/", " ").split():
        if word.endswith(".googleapis.com"):
            return word
    return None


class GcpApi:
    """The few Compute Engine and Service Usage calls the project needs, each bounded."""

    def __init__(self, project: str, credentials: Any, timeout_s: float = TIMEOUT_S) -> None:
        self.project = project
        self.credentials = credentials
        self.timeout_s = timeout_s
        self._clients: dict[str, Any] = {}

    @classmethod
    def connect(cls, project: str | None, timeout_s: float = TIMEOUT_S, key: str | None = None) -> GcpApi:
        """Load and refresh credentials; the project: the one given, the environment's, the key's.

        Raises NotLoggedIn, Offline, or GcpApiError (no project anywhere)."""
        credentials, credentials_project = load_credentials(timeout_s, key)
        chosen = project or project_from_environment() or credentials_project
        if not chosen:
            raise GcpApiError("no GCP project given")
        return cls(chosen, credentials, timeout_s)

    # -- clients -------------------------------------------------------------
    def _client(self, name: str, factory: Callable[..., T]) -> T:
        if name not in self._clients:
            options: dict[str, Any] = {}
            endpoint = endpoint_override()
            if endpoint:
                options["api_endpoint"] = endpoint
            self._clients[name] = factory(
                credentials=self.credentials, transport="rest", client_options=options or None
            )
        return self._clients[name]  # type: ignore[no-any-return]

    def _call(self, what: str, function: Callable[..., T], **request: Any) -> T:
        try:
            return function(request=request, retry=None, timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line of ours
            raise translate(exc, what) from None

    # -- Service Usage -------------------------------------------------------
    def service_enabled(self, service: str) -> bool:
        from google.cloud import service_usage_v1

        client = self._client("serviceusage", service_usage_v1.ServiceUsageClient)
        found = self._call(
            f"Service Usage API (state of {service})",
            client.get_service,
            name=f"projects/{self.project}/services/{service}",
        )
        return found.state == service_usage_v1.State.ENABLED

    # -- Compute Engine ------------------------------------------------------
    def region(self, region: str) -> RegionInfo:
        from google.cloud import compute_v1

        client = self._client("regions", compute_v1.RegionsClient)
        found = self._call(
            f"Compute Engine (region {region})", client.get, project=self.project, region=region
        )
        return RegionInfo(
            name=found.name,
            zones=sorted(short_name(z) for z in found.zones),
            quotas=_quotas(found.quotas),
        )

    def project_quotas(self) -> dict[str, Quota]:
        from google.cloud import compute_v1

        client = self._client("projects", compute_v1.ProjectsClient)
        found = self._call(f"Compute Engine (project {self.project})", client.get, project=self.project)
        return _quotas(found.quotas)

    def accelerator_zones(self, accelerator: str) -> set[str]:
        """Every zone (all regions) that offers this accelerator type."""
        from google.cloud import compute_v1

        client = self._client("accelerators", compute_v1.AcceleratorTypesClient)
        return self._zones_offering(client, "accelerator_types", accelerator)

    def machine_type_zones(self, machine_type: str) -> set[str]:
        """Every zone (all regions) that offers this machine type."""
        from google.cloud import compute_v1

        client = self._client("machines", compute_v1.MachineTypesClient)
        return self._zones_offering(client, "machine_types", machine_type)

    def machine_type_cpus(self, zone: str, machine_type: str) -> int:
        """The machine type's vCPUs (NotFound: not offered in that zone)."""
        from google.cloud import compute_v1

        client = self._client("machines", compute_v1.MachineTypesClient)
        found = self._call(
            f"machine type {machine_type} in {zone}",
            client.get,
            project=self.project,
            zone=zone,
            machine_type=machine_type,
        )
        return int(found.guest_cpus)

    def _zones_offering(self, client: Any, attribute: str, name: str) -> set[str]:
        """The zones whose scope of `client`'s aggregated list holds an item `name`
        (`attribute`: the scope's list of items)."""
        what = f"Compute Engine (zones offering {name})"
        pages = self._call(what, client.aggregated_list, project=self.project, filter=f'name = "{name}"')
        zones: set[str] = set()
        try:  # the pager fetches further pages while iterating
            for scope, scoped in pages:
                if any(item.name == name for item in getattr(scoped, attribute)):
                    zones.add(short_name(scope))
        except Exception as exc:  # noqa: BLE001
            raise translate(exc, what) from None
        return zones

    def image_from_family(self, project: str, family: str) -> ImageInfo:
        from google.cloud import compute_v1

        client = self._client("images", compute_v1.ImagesClient)
        found = self._call(
            f"image family {family} in {project}", client.get_from_family, project=project, family=family
        )
        return _image(found)

    def image(self, project: str, name: str) -> ImageInfo:
        from google.cloud import compute_v1

        client = self._client("images", compute_v1.ImagesClient)
        return _image(self._call(f"image {name} in {project}", client.get, project=project, image=name))

    def instance(self, zone: str, name: str) -> InstanceInfo:
        from google.cloud import compute_v1

        client = self._client("instances", compute_v1.InstancesClient)
        found = self._call(
            f"instance {name} in {zone}", client.get, project=self.project, zone=zone, instance=name
        )
        return InstanceInfo(name=found.name, zone=short_name(found.zone), status=found.status)

    def start_instance(self, zone: str, name: str) -> None:
        """Ask for a stopped VM to start (returns once the request is accepted, not when it runs)."""
        from google.cloud import compute_v1

        client = self._client("instances", compute_v1.InstancesClient)
        self._call(f"start {name} in {zone}", client.start, project=self.project, zone=zone, instance=name)


def _quotas(quotas: Iterable[Any]) -> dict[str, Quota]:
    return {q.metric: Quota(q.metric, float(q.limit), float(q.usage)) for q in quotas}


def _image(found: Any) -> ImageInfo:
    deprecated = found.deprecated.state if "deprecated" in found else ""
    return ImageInfo(name=found.name, self_link=found.self_link, status=found.status, deprecated=deprecated)
