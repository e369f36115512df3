"""Regenerate the schemas that tests/k8s/test_manifests.py validates the rendered tree against, offline.

Nothing here runs at test time: the output (kubernetes-*.json and crds/*.json) is committed, so the test needs
neither the network nor these inputs. Run it only to move to another Kubernetes or operator version:

    python deploy/k8s/schemas/vendor.py \
        --k8s-schemas DIR/kubernetes_validate/kubernetes-json-schema/v1.35.0-local-strict \
        --k8s-label "kubernetes-validate 1.37.0 (PyPI wheel)" \
        --crd "strimzi/strimzi-kafka-operator 1.2.0:040-Crd-kafka.yaml" ... (041, 043, 045, 047 likewise) \
        --crd "cloudnative-pg/cloudnative-pg v1.30.0:postgresql.cnpg.io_clusters.yaml" \
        --crd "kedacore/keda v2.20.2:keda.sh_scaledobjects.yaml"

--k8s-schemas: one version folder of the `kubernetes-validate` wheel (`pip download --no-deps kubernetes-validate`,
then unzip): JSON Schema (2020-12) of every core kind, "strict" (additionalProperties: false), one _definitions.json.
Only the kinds in CORE_KINDS are kept, with the definitions they reach, so the file stays small.

--crd LABEL:FILE: a CustomResourceDefinition (YAML, as the operator's release ships it). The openAPIV3Schema of its
storage version is written to crds/<group>_<version>_<Kind>.json. `description` texts are dropped everywhere (they
are most of the bytes and validate nothing); every other keyword is kept as the CRD has it. SOURCES.md records
where each file came from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent

# (apiVersion, kind) of every core object the tree renders; the test fails on a kind missing here.
CORE_KINDS = [
    ("v1", "Namespace"), ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "Service"), ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"), ("batch/v1", "Job"), ("policy/v1", "PodDisruptionBudget"),
    ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
]
# ObjectMeta is also used on its own: the test validates every custom resource's metadata against it.
EXTRA_DEFS = ["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]


def strip_descriptions(node: Any, in_properties: bool = False) -> Any:
    """The schema without `description` keywords (a property *named* description is kept)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description" and not in_properties and isinstance(value, str):
                continue
            out[key] = strip_descriptions(value, in_properties=key in ("properties", "patternProperties",
                                                                        "$defs", "definitions")
                                          and not in_properties)
        return out
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value.rsplit("/", 1)[-1])
            else:
                found |= _refs(value)
    elif isinstance(node, list):
        for v in node:
            found |= _refs(v)
    return found


def _local_refs(node: Any) -> Any:
    """'/api/_definitions.json#/$defs/X' and '#/$defs/X' both become '#/$defs/X' (one self-contained file)."""
    if isinstance(node, dict):
        return {k: ("#/$defs/" + v.rsplit("/", 1)[-1] if k == "$ref" and isinstance(v, str) else _local_refs(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_local_refs(v) for v in node]
    return node


def kind_file(api_version: str, kind: str) -> str:
    group, _, version = api_version.rpartition("/")
    return f"{kind.lower()}-{group.split('.')[0] + '-' if group else ''}{version}.json"


def vendor_core(folder: Path) -> dict[str, Any]:
    defs_all = json.loads((folder / "_definitions.json").read_text())["$defs"]
    kinds: dict[str, str] = {}
    wanted: dict[str, Any] = {}
    for api_version, kind in CORE_KINDS:
        top = json.loads((folder / kind_file(api_version, kind)).read_text())
        name = next(n for n, d in defs_all.items()
                    if any(g.get("kind") == kind and "/".join(x for x in (g.get("group"), g.get("version")) if x)
                           == api_version for g in d.get("x-kubernetes-group-version-kind", [])))
        for key in ("$schema", "$id"):
            top.pop(key, None)
        wanted[name] = top  # the kind's own file: like the definition, plus enums for apiVersion and kind
        kinds[f"{api_version}/{kind}"] = name
    queue = [*wanted.values(), *(defs_all[n] for n in EXTRA_DEFS)]
    wanted.update({n: defs_all[n] for n in EXTRA_DEFS})
    while queue:
        for ref in _refs(queue.pop()):
            if ref not in wanted:
                wanted[ref] = defs_all[ref]
                queue.append(defs_all[ref])
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "x-kinds": kinds, "$defs": strip_descriptions(_local_refs(dict(sorted(wanted.items()))), True)}


def vendor_crd(path: Path) -> tuple[str, dict[str, Any]]:
    crd = yaml.safe_load(path.read_text())
    spec = crd["spec"]
    version = next(v for v in spec["versions"] if v.get("storage"))
    name = f"{spec['group']}_{version['name']}_{spec['names']['kind']}.json"
    schema = strip_descriptions(version["schema"]["openAPIV3Schema"])
    return name, {"x-group": spec["group"], "x-version": version["name"], "x-kind": spec["names"]["kind"],
                  **schema}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k8s-schemas", type=Path, required=True)
    parser.add_argument("--k8s-label", default="kubernetes-validate", help="what --k8s-schemas is, for SOURCES.md")
    parser.add_argument("--crd", action="append", default=[], help="LABEL:FILE, e.g. strimzi-1.2.0:040-Crd-kafka.yaml")
    args = parser.parse_args(argv)
    sources = ["# Where the vendored schemas come from", "",
               "Generated by `deploy/k8s/schemas/vendor.py` (descriptions dropped, nothing else changed).", ""]
    core = vendor_core(args.k8s_schemas)
    out = HERE / f"kubernetes-{args.k8s_schemas.name.split('-')[0]}.json"
    out.write_text(json.dumps(core, separators=(",", ":"), sort_keys=True) + "\n")
    sources.append(f"- `{out.name}`: {args.k8s_label}, `{args.k8s_schemas.name}` "
                   f"(kinds: {', '.join(core['x-kinds'])})")
    (HERE / "crds").mkdir(exist_ok=True)
    for item in args.crd:
        label, _, file = item.partition(":")
        name, schema = vendor_crd(Path(file))
        (HERE / "crds" / name).write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")
        sources.append(f"- `crds/{name}`: {label}, `{Path(file).name}`")
    (HERE / "SOURCES.md").write_text("\n".join(sources) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
