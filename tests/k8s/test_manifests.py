"""deploy/k8s: the Kubernetes manifests (kustomize) for a scaled-out SightScan.

No cluster runs here, so this renders the tree with `kubectl kustomize` and checks it offline:
- every rendered object against its schema: core kinds against Kubernetes' own JSON Schema, the operators' custom
  resources (Strimzi, CloudNativePG, KEDA) against their CRDs' openAPIV3Schema, with unknown fields refused as the
  API server's strict field validation refuses them. The schemas are vendored in deploy/k8s/schemas (vendor.py,
  SOURCES.md): nothing is fetched;
- what must hold for SightScan to work there: the settings, topics, consumer groups and connector config are the
  project's own (computed by its code, not copied), Kafka keeps 3 copies with min.insync.replicas 2, PostgreSQL has
  logical WAL, every Deployment has probes, resources and the migration first.
What this cannot check offline (CEL rules of the CRDs, the operators' own webhooks, images, a real rollout) is
listed in deploy/k8s/README.md.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from connectors import CONNECTOR_NAME, debezium_config
from consumers.settings import LabellerSettings
from gateway.settings import GatewaySettings
from localsystem.cli import settings_of_every_service
from sightscan.config import Settings
from sightscan.topics import command_topic
from streams.rekey import rekey_group
from streams.settings import StreamsSettings
from trainer.settings import load as load_trainer_settings

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "deploy" / "k8s"
SCHEMAS = TREE / "schemas"
KUBECTL_FALLBACK = "/usr/bin/kubectl"  # Debian's kubectl package
# Variables the manifests set that are not SightScan settings: the libraries' HOME, unbuffered logs.
NOT_SIGHTSCAN_VARS = {"HOME", "PYTHONUNBUFFERED"}
# The keys where the cluster's connector differs from debezium_config(), and why (deploy/k8s/kafka/connect.yaml).
CONNECTOR_DIFFERENCES = {
    "database.user": "${env:PGUSER}",  # from CloudNativePG's secret, through Connect's env config provider
    "database.password": "${env:PGPASSWORD}",
    "slot.failover": "true",  # only here: the slot survives a PostgreSQL failover
}
SCALED = {"streams", "labeller", "trainer"}
# resource.Quantity's syntax (k8s.io/apimachinery); the JSON Schema only says "string or number".
QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


# Rendering -------------------------------------------------------------------------------------------------------


def _kubectl() -> str:
    found = shutil.which("kubectl") or (KUBECTL_FALLBACK if os.access(KUBECTL_FALLBACK, os.X_OK) else None)
    if found is None:
        pytest.fail("kubectl is needed to render deploy/k8s (`kubectl kustomize`) and was not found on PATH nor at "
                    f"{KUBECTL_FALLBACK}: install Debian's package (`apt-get install -y kubectl`) or any kubectl "
                    "1.27+, which embeds kustomize.")
    return found


@cache
def _rendered() -> tuple[dict[str, Any], ...]:
    proc = subprocess.run([_kubectl(), "kustomize", str(TREE)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {TREE} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return copy.deepcopy(list(_rendered()))


def _of(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = list(_of(objects, kind).values())
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _config_map(objects: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """A generated ConfigMap by its name before kustomize's hash suffix."""
    found = [o for o in objects if o["kind"] == "ConfigMap" and re.fullmatch(prefix + r"(-[a-z0-9]{10})?",
                                                                             o["metadata"]["name"])]
    assert len(found) == 1, f"ConfigMap {prefix}: {len(found)} found"
    return found[0]


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod_spec(obj)
    return [*spec.get("initContainers", []), *spec["containers"]]


def _main(obj: dict[str, Any]) -> dict[str, Any]:
    return _pod_spec(obj)["containers"][0]


def _env_of(container: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The container's environment as far as the tree knows it: its ConfigMaps' values and its own entries (a
    value from a Secret is the valueFrom object)."""
    env: dict[str, Any] = {}
    config_maps = _of(objects, "ConfigMap")
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def _settings_env(objects: list[dict[str, Any]], deployment: str = "streams") -> dict[str, str]:
    """A service's environment with stand-ins for what comes from Secrets, to build its settings from."""
    env = _env_of(_main(_of(objects, "Deployment")[deployment]), objects)
    return {k: (v if isinstance(v, str) else f"secret-{k.lower()}") for k, v in env.items()}


# Schemas ---------------------------------------------------------------------------------------------------------


@cache
def _core() -> dict[str, Any]:
    (path,) = SCHEMAS.glob("kubernetes-v*.json")
    return yaml.safe_load(path.read_text())  # JSON is YAML


def _structural(node: Any) -> Any:
    """A CRD schema as the API server applies it with strict field validation (kubectl's default): an object with
    declared properties refuses others unless it preserves unknown fields. anyOf/oneOf/allOf/not only constrain
    values, so they are left as they are."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "properties":
                out[key] = {name: _structural(sub) for name, sub in value.items()}
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                out[key] = _structural(value)
            else:
                out[key] = value
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    return node


@cache
def _crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    group, _, version = api_version.partition("/")
    path = SCHEMAS / "crds" / f"{group}_{version}_{kind}.json"
    if not path.exists():
        return None
    schema = _structural(yaml.safe_load(path.read_text()))
    # OpenAPI v3.0 schemas: draft 4 is the JSON Schema they extend.
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


@cache
def _core_validator(definition: str) -> jsonschema.protocols.Validator:
    schema = {**_core(), "$ref": f"#/$defs/{definition}"}
    return jsonschema.Draft202012Validator(schema)


def _schema_errors(obj: dict[str, Any]) -> list[str]:
    """Every way `obj` breaks its schema ("no schema" when none is vendored for its kind)."""
    where = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    core = _core()["x-kinds"].get(f"{obj['apiVersion']}/{obj['kind']}")
    if core is not None:
        validators = [(_core_validator(core), obj)]
    else:
        crd = _crd_validator(obj["apiVersion"], obj["kind"])
        if crd is None:
            return [f"{where}: no schema for {obj['apiVersion']} {obj['kind']} in {SCHEMAS} (vendor.py)"]
        # The CRD's schema says only `metadata: {type: object}`: metadata is Kubernetes' ObjectMeta.
        meta = _core_validator("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
        validators = [(crd, obj), (meta, obj.get("metadata", {}))]
    return [f"{where}: {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for validator, instance in validators for e in validator.iter_errors(instance)]


def test_the_vendored_schemas_are_small_and_recorded():
    files = [*SCHEMAS.glob("*.json"), *SCHEMAS.glob("crds/*.json")]
    assert sum(f.stat().st_size for f in files) < 2_000_000
    sources = (SCHEMAS / "SOURCES.md").read_text()
    for f in files:
        assert f.name in sources, f"{f.name} is not in SOURCES.md"


def test_every_rendered_object_is_valid_against_its_schema(objects):
    kinds = {(o["apiVersion"], o["kind"]) for o in objects}
    # The tree has the custom resources it promises, so their schemas are really exercised.
    assert {("kafka.strimzi.io/v1", k) for k in ("Kafka", "KafkaNodePool", "KafkaConnect", "KafkaConnector",
                                                 "KafkaTopic")} <= kinds
    assert {("postgresql.cnpg.io/v1", "Cluster"), ("keda.sh/v1alpha1", "ScaledObject"), ("apps/v1", "Deployment"),
            ("batch/v1", "Job"), ("v1", "Service"), ("v1", "ConfigMap")} <= kinds
    errors = [err for obj in objects for err in _schema_errors(obj)]
    assert not errors, "schema errors:\n" + "\n".join(errors)
    for obj in objects:
        assert DNS_SUBDOMAIN.match(obj["metadata"]["name"]), obj["metadata"]["name"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "sightscan", obj["metadata"]["name"]


def test_the_validation_refuses_what_the_api_server_would(objects):
    """The checks above are not vacuous: a typo, a wrong type, a missing field each fail."""
    kafka = copy.deepcopy(_one(objects, "Kafka"))
    kafka["spec"]["kafka"]["confg"] = kafka["spec"]["kafka"].pop("config")  # unknown field
    assert any("confg" in e for e in _schema_errors(kafka))
    pool = copy.deepcopy(next(iter(_of(objects, "KafkaNodePool").values())))
    pool["spec"]["roles"] = ["zookeeper"]  # not in the enum
    assert _schema_errors(pool)
    cluster = copy.deepcopy(_one(objects, "Cluster"))
    cluster["spec"]["instances"] = "three"
    assert _schema_errors(cluster)
    scaled = copy.deepcopy(_of(objects, "ScaledObject")["trainer"])
    del scaled["spec"]["scaleTargetRef"]
    assert _schema_errors(scaled)
    deployment = copy.deepcopy(_of(objects, "Deployment")["gateway"])
    _main(deployment)["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    assert any("paht" in e for e in _schema_errors(deployment))
    deployment = copy.deepcopy(_of(objects, "Deployment")["gateway"])
    _main(deployment)["resources"]["requests"]["memory"] = {"Gi": 1}
    assert _schema_errors(deployment)
    connector = copy.deepcopy(_one(objects, "KafkaConnector"))
    connector["metadata"]["labels"] = ["not", "a", "map"]  # metadata is checked against ObjectMeta
    assert _schema_errors(connector)


# What SightScan needs --------------------------------------------------------------------------------------------


def test_every_variable_set_is_a_sightscan_setting_and_the_values_parse(objects):
    declared = {f.metadata["env"] for _, cls in settings_of_every_service() for f in dataclasses.fields(cls)}
    for obj in [*_of(objects, "Deployment").values(), *_of(objects, "Job").values()]:
        for container in _containers(obj):
            unknown = set(_env_of(container, objects)) - declared - NOT_SIGHTSCAN_VARS
            assert not unknown, f"{obj['metadata']['name']}/{container['name']} sets variables no service reads: " \
                                f"{sorted(unknown)}"
    # docker-compose.yml's shared environment, variable for variable.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name in ("streams", "crawler", "labeller", "trainer", "gateway"):
        env = _env_of(_main(_of(objects, "Deployment")[name]), objects)
        assert set(compose["services"][name]["environment"]) - {"GOOGLE_APPLICATION_CREDENTIALS", "MAPS_KEY",
                                                                "SIGHTSCAN_API_TOKEN", "GATEWAY_WS_TOKEN"} \
            <= set(env), name
        # Every service's settings read these values without a ConfigError (as at its start).
        values = _settings_env(objects, name)
        for _, cls in settings_of_every_service():
            cls.from_env(values)
    gateway = _settings_env(objects, "gateway")
    assert GatewaySettings.from_env(gateway).host == "0.0.0.0"  # else the kubelet and the Service cannot reach it


def test_every_deployment_migrates_first_and_has_probes_and_resources(objects):
    deployments = _of(objects, "Deployment")
    assert set(deployments) == {"streams", "crawler", "labeller", "trainer", "gateway"}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, obj in deployments.items():
        spec = _pod_spec(obj)
        assert spec.get("restartPolicy", "Always") == "Always"
        assert obj["spec"]["selector"]["matchLabels"].items() <= obj["spec"]["template"]["metadata"]["labels"].items()
        assert [c["command"] for c in spec["initContainers"]][0] == ["sightscan", "migrate"], name
        assert spec["initContainers"][1]["command"][-1] == "wait-for-topics", name
        main = _main(obj)
        # The command docker-compose.yml runs (the stream worker adds Faust's web server for its probe).
        assert main["command"][:4] == compose[name]["command"][:4], name
        assert "livenessProbe" in main and "readinessProbe" in main, f"{name} has no probes"
        ports = {p["name"]: p["containerPort"] for p in main.get("ports", [])}
        for probe in (main["livenessProbe"], main["readinessProbe"]):
            if "httpGet" in probe:
                assert probe["httpGet"]["port"] in ports, f"{name}: probe on an undeclared port"
        for container in _containers(obj):
            res = container["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"], \
                f"{name}/{container['name']} needs cpu and memory requests and a memory limit"
            for quantity in [*res["requests"].values(), *res["limits"].values()]:
                assert QUANTITY.match(str(quantity)), f"{name}/{container['name']}: {quantity!r} is no quantity"
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            env = _env_of(container, objects)
            assert {env["HOME"], env["SIGHTSCAN_HOME"]} <= mounts, f"{name}/{container['name']}: no writable HOME"
        # `nobody` in the Dockerfile: runAsNonRoot needs its numeric id.
        assert spec["securityContext"]["runAsUser"] == 65534 and spec["securityContext"]["runAsNonRoot"]
    migrate = _one(objects, "Job")
    assert _main(migrate)["command"] == ["sightscan", "migrate"]
    assert _pod_spec(migrate)["restartPolicy"] == "OnFailure"


def test_the_gateway_is_probed_on_its_health_endpoints_behind_a_cluster_ip_service(objects):
    gateway = _of(objects, "Deployment")["gateway"]
    main = _main(gateway)
    port = int(_env_of(main, objects)["DOS_PORT"])
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ports[main["livenessProbe"]["httpGet"]["port"]] == port == ports[main["readinessProbe"]["httpGet"]["port"]]
    service = _of(objects, "Service")["gateway"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= gateway["spec"]["template"]["metadata"]["labels"].items()
    assert ports[service["spec"]["ports"][0]["targetPort"]] == port
    # The stream worker's liveness probe is Faust's web server, which the command turns on at that port.
    streams = _main(_of(objects, "Deployment")["streams"])
    command = streams["command"]
    assert "--with-web" in command
    faust_port = {p["name"]: p["containerPort"] for p in streams["ports"]}[streams["livenessProbe"]["httpGet"]["port"]]
    assert command[command.index("--web-port") + 1] == str(faust_port)


def test_kafka_is_kraft_with_three_copies_of_everything_and_two_in_sync(objects):
    kafka = _one(objects, "Kafka")
    name = kafka["metadata"]["name"]
    config = kafka["spec"]["kafka"]["config"]
    assert "zookeeper" not in kafka["spec"]
    assert config["default.replication.factor"] == 3 and config["min.insync.replicas"] == 2
    assert config["offsets.topic.replication.factor"] == 3
    assert config["transaction.state.log.replication.factor"] == 3 and config["transaction.state.log.min.isr"] == 2
    pools = _of(objects, "KafkaNodePool").values()
    roles: dict[str, int] = {}
    for pool in pools:
        assert pool["metadata"]["labels"]["strimzi.io/cluster"] == name
        for role in pool["spec"]["roles"]:
            roles[role] = roles.get(role, 0) + pool["spec"]["replicas"]
    assert roles == {"controller": 3, "broker": 3}
    # The clients' bootstrap address is this cluster's plain listener.
    plain = next(li for li in kafka["spec"]["kafka"]["listeners"] if not li["tls"])
    bootstrap = f"{name}-kafka-bootstrap:{plain['port']}"
    env = _settings_env(objects)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == bootstrap
    assert _one(objects, "KafkaConnect")["spec"]["bootstrapServers"] == bootstrap


def _k8s_helper():
    spec = importlib.util.spec_from_file_location("sightscan_k8s", TREE / "app" / "sightscan_k8s.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_topic_the_services_use_is_a_kafka_topic_with_three_replicas(objects):
    env = _settings_env(objects)
    wanted = _k8s_helper().wanted_topics(Settings.from_env(env), StreamsSettings.from_env(env))
    topics = {t["spec"]["topicName"]: t for t in _of(objects, "KafkaTopic").values()}
    assert set(topics) == set(wanted)
    kafka = _one(objects, "Kafka")["metadata"]["name"]
    for name, topic in topics.items():
        assert topic["spec"]["replicas"] == 3, name
        assert topic["spec"]["partitions"] == wanted[name], name
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka
    app_id = StreamsSettings.from_env(env).app_id_for(env["TOPIC_PREFIX"])
    assert topics[f"{app_id}-city-state-changelog"]["spec"]["config"]["cleanup.policy"] == "compact"


def test_keda_scales_the_three_consumers_on_their_real_groups_and_topics(objects):
    env = _settings_env(objects)
    prefix, partitions = env["TOPIC_PREFIX"], int(env["TOPIC_PARTITIONS"])
    app_id = StreamsSettings.from_env(env).app_id_for(prefix)
    expected = {
        "streams": {(rekey_group(app_id), None), (app_id, f"{app_id}.facts")},
        "labeller": {(LabellerSettings.from_env(env).group(prefix), command_topic("labelling", prefix))},
        "trainer": {(load_trainer_settings(Settings.from_env(env), env).group_id, command_topic("training", prefix))},
    }
    deployments = _of(objects, "Deployment")
    kafka = _one(objects, "Kafka")["metadata"]["name"]
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in _of(objects, "ScaledObject").values()}
    assert set(scaled) == SCALED
    for target, obj in scaled.items():
        spec = obj["spec"]
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment" and target in deployments
        assert "replicas" not in deployments[target]["spec"], f"{target}: replicas would fight the autoscaler"
        # KEDA's CEL rule, and no more consumers than partitions (the rest would idle).
        assert spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"] <= partitions
        groups = set()
        for trigger in spec["triggers"]:
            meta = trigger["metadata"]
            assert trigger["type"] == "kafka"
            # Read from KEDA's namespace: the full service name.
            assert meta["bootstrapServers"] == f"{kafka}-kafka-bootstrap.sightscan.svc:9092"
            assert meta["offsetResetPolicy"] == "earliest"  # as every SightScan consumer (sightscan/kafka.py)
            assert tuple(int(x) for x in meta["version"].split(".")) >= (2, 1), "Kafka 4 needs protocol 2.1+"
            groups.add((meta["consumerGroup"], meta.get("topic")))
        assert groups == expected[target], target
    # No other Deployment is autoscaled: the gateway and the crawler have fixed replicas.
    for name in set(deployments) - SCALED:
        assert deployments[name]["spec"]["replicas"] >= 1


def test_connect_builds_debezium_3_and_the_connector_is_the_projects(objects):
    connect = _one(objects, "KafkaConnect")
    assert connect["metadata"]["annotations"]["strimzi.io/use-connector-resources"] == "true"
    pom = ET.parse(ROOT / "localsystem" / "stack" / "maven" / "debezium.pom.xml").getroot()
    local_version = pom.find("{http://maven.apache.org/POM/4.0.0}properties/"
                             "{http://maven.apache.org/POM/4.0.0}debezium.version").text
    artifacts = [a for p in connect["spec"]["build"]["plugins"] for a in p["artifacts"]]
    debezium = [a for a in artifacts if a.get("artifact") == "debezium-connector-postgres"]
    assert len(debezium) == 1 and debezium[0]["group"] == "io.debezium"
    assert debezium[0]["version"].startswith("3.") and debezium[0]["version"] == local_version

    connector = _one(objects, "KafkaConnector")
    assert connector["metadata"]["name"] == CONNECTOR_NAME
    assert connector["metadata"]["labels"]["strimzi.io/cluster"] == connect["metadata"]["name"]
    env = _settings_env(objects)
    want = debezium_config(Settings.from_env(env))
    have = {"connector.class": connector["spec"]["class"], "tasks.max": str(connector["spec"]["tasksMax"]),
            **{k: str(v) for k, v in connector["spec"]["config"].items()}}
    for key in set(want) | set(have):
        if key in CONNECTOR_DIFFERENCES:
            assert have[key] == CONNECTOR_DIFFERENCES[key], key
        else:
            assert have.get(key) == want.get(key), f"{key}: the cluster has {have.get(key)!r}, " \
                                                   f"connectors/ has {want.get(key)!r}"
    # The ${env:…} references resolve: Connect has the provider and the variables, from the database's secret.
    assert connect["spec"]["config"]["config.providers.env.class"].endswith("EnvVarConfigProvider")
    connect_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in connect["spec"]["template"]["connectContainer"]
                   ["env"]}
    app_secret = f"{_one(objects, 'Cluster')['metadata']['name']}-app"
    assert connect_env == {"PGUSER": {"name": app_secret, "key": "username"},
                           "PGPASSWORD": {"name": app_secret, "key": "password"}}


def test_postgres_has_logical_wal_and_a_replication_role_the_services_log_in_as(objects):
    cluster = _one(objects, "Cluster")
    name, spec = cluster["metadata"]["name"], cluster["spec"]
    params = spec["postgresql"]["parameters"]
    assert params["wal_level"] == "logical"
    assert spec["instances"] == 3
    # The failover slot the connector asks for is kept on the standbys.
    assert spec["replicationSlots"]["highAvailability"]["synchronizeLogicalDecoding"] is True
    assert params["sync_replication_slots"] == "on" and params["hot_standby_feedback"] == "on"
    # CEL rule of the CRD (not evaluated offline): imageName and imageCatalogRef are mutually exclusive.
    assert not ("imageName" in spec and "imageCatalogRef" in spec)
    assert spec["imageName"].split(":")[1].startswith("18")  # as docker-compose.yml's postgres:18
    env = _settings_env(objects)
    initdb = spec["bootstrap"]["initdb"]
    assert initdb["database"] == env["PGDATABASE"] and env["PGHOST"] == f"{name}-rw" and env["PGPORT"] == "5432"
    owner = next(r for r in spec["managed"]["roles"] if r["name"] == initdb["owner"])
    assert owner["replication"] is True and owner["login"] is True  # Debezium's replication connection
    for obj in [*_of(objects, "Deployment").values(), *_of(objects, "Job").values()]:
        for container in _containers(obj):
            refs = _env_of(container, objects)
            assert refs["PGUSER"] == {"secretKeyRef": {"name": f"{name}-app", "key": "username"}}
            assert refs["PGPASSWORD"] == {"secretKeyRef": {"name": f"{name}-app", "key": "password"}}


def test_images_are_the_repositorys_one_per_extra(objects):
    kustomization = yaml.safe_load((TREE / "kustomization.yaml").read_text())
    names = {i["name"] for i in kustomization["images"]}
    assert names == {"sightscan", "sightscan-crawler", "sightscan-labeller", "sightscan-trainer", "sightscan-gateway"}
    for obj in [*_of(objects, "Deployment").values(), *_of(objects, "Job").values()]:
        for container in _containers(obj):
            assert container["image"].split(":")[0] in names, container["image"]
    assert _main(_of(objects, "Deployment")["trainer"])["image"].startswith("sightscan-trainer:")


@pytest.mark.stack
def test_the_topic_wait_and_the_readiness_check_against_a_real_stack(settings, monkeypatch, tmp_path):
    """app/sightscan_k8s.py, the one program the manifests add, on the real local stack."""
    from sightscan.topics import ensure_topics

    helper = _k8s_helper()
    for key, value in settings.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TOPIC_PREFIX", f"k8s{os.getpid()}")  # topics no other test made
    monkeypatch.setenv("STREAMS_APP_ID", f"k8s{os.getpid()}-streams")
    assert helper.ready() == 0
    assert helper.wait_for_topics(timeout_s=0) == 1  # none exists yet: it says so and gives up at its deadline
    mine = Settings.from_env()
    ensure_topics(mine, helper.wanted_topics(mine, StreamsSettings.from_env()))
    assert helper.wait_for_topics(timeout_s=0) == 0
