#!/usr/bin/env python3
"""Offline checks of deploy/kubernetes (run by scripts/check-kubernetes.sh, in
the venv of deploy/requirements-kubernetes.txt).

1. Renders the Kustomize base the way `kubectl kustomize` does for what the
   base uses (resources, namespace, labels); with --kustomize-output, also
   compares that with kubectl's own rendering.
2. Validates every built-in object against the Kubernetes API's JSON schemas
   (kubernetes-validate, strict: unknown fields are errors) for --kubernetes-version.
   KServe's objects (serving.kserve.io) have no schema there: they get the
   structural checks of step 3 only.
3. Checks what the schemas cannot: probes on /v2/health/live and
   /v2/health/ready, the memory limit against MODEL_CACHE_BYTES (the cache at
   most 60% of it), MODEL_SESSIONS against the CPU limit, the staging volume
   against MODEL_STAGING_BYTES, the repository volume ReadWriteMany and
   mounted read-only, the admin port on its own ClusterIP Service only and
   fenced by the NetworkPolicy, the KServe runtime (onnx, v2, the same
   probes and sizing) and the InferenceService naming it, and every setting
   of the ConfigMap documented in the README.
Exits 1 on the first list of failures, printing each.
"""

import argparse
import pathlib
import re
import sys

import kubernetes_validate
import yaml

CACHE_SHARE = 0.6
UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30,
         "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}

failures = []


def check(ok, message):
    if not ok:
        failures.append(message)


def quantity(text):
    """Bytes of a Kubernetes quantity (1792Mi) or of a model-router byte count (1Gi, 512M)."""
    match = re.fullmatch(r"([0-9.]+)\s*([A-Za-z]*)", str(text).strip())
    if not match or match.group(2).lower() not in UNITS:
        raise SystemExit(f"check-kubernetes: cannot read the quantity {text!r}")
    return float(match.group(1)) * UNITS[match.group(2).lower()]


def cpus(text):
    text = str(text)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def render(base):
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((base / resource).read_text()):
            if doc is None:
                continue
            metadata = doc.setdefault("metadata", {})
            if doc["kind"] not in {"Namespace", "StorageClass"}:
                metadata["namespace"] = kustomization["namespace"]
            for label in kustomization.get("labels", []):
                metadata.setdefault("labels", {}).update(label["pairs"])
            objects.append(doc)
    return objects


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind, name=None):
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    check(len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0] if found else {}


def check_container(where, container, env, cpu_limit_needed=True):
    probes = {probe: container.get(probe, {}).get("httpGet", {}).get("path")
              for probe in ("livenessProbe", "readinessProbe", "startupProbe")}
    check(probes["livenessProbe"] == "/v2/health/live", f"{where}: liveness probe must GET /v2/health/live, is {probes['livenessProbe']}")
    check(probes["readinessProbe"] == "/v2/health/ready", f"{where}: readiness probe must GET /v2/health/ready, is {probes['readinessProbe']}")
    if probes["startupProbe"] is not None:
        check(probes["startupProbe"] == "/v2/health/live", f"{where}: startup probe must GET /v2/health/live")
    limits = container.get("resources", {}).get("limits", {})
    requests = container.get("resources", {}).get("requests", {})
    memory = quantity(limits.get("memory", "0"))
    cache = quantity(env.get("MODEL_CACHE_BYTES", "1Gi"))
    check(cache <= CACHE_SHARE * memory,
          f"{where}: MODEL_CACHE_BYTES {env.get('MODEL_CACHE_BYTES')} is more than {CACHE_SHARE:.0%} of the memory limit {limits.get('memory')}")
    check(requests.get("memory") == limits.get("memory"),
          f"{where}: memory request {requests.get('memory')} must equal the limit {limits.get('memory')} (a byte-bounded cache sized to it)")
    if cpu_limit_needed:
        check("cpu" in limits, f"{where}: no CPU limit")
    if "cpu" in limits and "MODEL_SESSIONS" in env:
        check(int(env["MODEL_SESSIONS"]) <= max(1, cpus(limits["cpu"])),
              f"{where}: MODEL_SESSIONS {env['MODEL_SESSIONS']} exceeds the CPU limit {limits['cpu']}")
    security = container.get("securityContext", {})
    check(security.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation must be false")
    check(security.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: must drop ALL capabilities")
    args = container.get("args", [])
    check(args[:1] == ["serve"], f"{where}: must run `serve`, runs {args}")
    return args


def flag(args, name):
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=pathlib.Path, default=pathlib.Path("deploy/kubernetes"))
    parser.add_argument("--readme", type=pathlib.Path, default=pathlib.Path("README.md"))
    parser.add_argument("--kubernetes-version", default="1.31.0")
    parser.add_argument("--kustomize-output", type=pathlib.Path, help="`kubectl kustomize` of the base, to compare")
    args = parser.parse_args()

    objects = render(args.base)
    names = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    print(f"check-kubernetes: rendered {len(objects)} objects: " + ", ".join(f"{k}/{n}" for k, n in names))
    if args.kustomize_output:
        theirs = [d for d in yaml.safe_load_all(args.kustomize_output.read_text()) if d]
        check(sorted((o["kind"], o["metadata"]["name"]) for o in theirs) == names,
              "kubectl kustomize renders other objects than the resources listed")
        ours = {(o["kind"], o["metadata"]["name"]): o for o in objects}
        for doc in theirs:
            check(doc == ours.get((doc["kind"], doc["metadata"]["name"])),
                  f"kubectl kustomize renders {doc['kind']}/{doc['metadata']['name']} differently")

    kserve = [yaml.safe_load(p.read_text()) for p in sorted((args.base / "kserve").glob("*.yaml"))]
    validated = 0
    for doc in objects + kserve:
        label = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("serving.kserve.io/"):
            continue
        try:
            kubernetes_validate.validate(doc, args.kubernetes_version, strict=True)
            validated += 1
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{label}: {error.message} at {'.'.join(str(p) for p in error.path)}")
    print(f"check-kubernetes: {validated} objects valid against the Kubernetes {args.kubernetes_version} schemas (strict)")

    env = one(objects, "ConfigMap", "model-router").get("data", {})
    deployment = one(objects, "Deployment", "model-router")
    pod = deployment.get("spec", {}).get("template", {}).get("spec", {})
    (container,) = pod.get("containers", [{}])
    container_args = check_container("Deployment model-router", container, env)
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    check(flag(container_args, "--addr") == f"0.0.0.0:{ports.get('http')}", "the --addr port must be the `http` containerPort")
    check(flag(container_args, "--admin-addr") == f"0.0.0.0:{ports.get('admin')}", "the --admin-addr port must be the `admin` containerPort")
    check(flag(container_args, "--grpc-addr") == f"0.0.0.0:{ports.get('grpc')}", "the --grpc-addr port must be the `grpc` containerPort")
    mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    models = mounts.get("models", {})
    check(models.get("mountPath") == env.get("MODEL_ROOT") and models.get("readOnly") is True,
          "the repository volume must be mounted read-only at MODEL_ROOT")
    claim = volumes.get("models", {}).get("persistentVolumeClaim", {}).get("claimName")
    pvc = one(objects, "PersistentVolumeClaim", claim)
    check(pvc.get("spec", {}).get("accessModes") == ["ReadWriteMany"], "the repository claim must be ReadWriteMany")
    storage_class = one(objects, "StorageClass", pvc.get("spec", {}).get("storageClassName"))
    check(storage_class.get("provisioner") == "efs.csi.aws.com", "the example storage class is the EFS CSI driver's")
    staging = mounts.get("staging", {})
    check(staging.get("mountPath") == env.get("MODEL_STAGING_DIR"), "the staging volume must be mounted at MODEL_STAGING_DIR")
    size = volumes.get("staging", {}).get("emptyDir", {}).get("sizeLimit", "0")
    check(quantity(size) >= quantity(env.get("MODEL_STAGING_BYTES", "0")),
          f"the staging volume ({size}) is smaller than MODEL_STAGING_BYTES")
    check(container.get("securityContext", {}).get("readOnlyRootFilesystem") is True, "the root filesystem must be read-only")

    front = one(objects, "Service", "model-router")
    admin = one(objects, "Service", "model-router-admin")
    check(all(p.get("targetPort") != "admin" and p.get("port") != ports.get("admin") for p in front.get("spec", {}).get("ports", [])),
          "the front Service must not expose the admin port")
    check(admin.get("spec", {}).get("type") == "ClusterIP", "the admin Service must be ClusterIP only")
    check(any(p.get("targetPort") == "grpc" and p.get("appProtocol") == "kubernetes.io/h2c"
              for p in front.get("spec", {}).get("ports", [])),
          "the front Service must expose the `grpc` port as h2c (gRPC without TLS)")
    check(not by_kind(objects, "Ingress"), "no Ingress in the base (the admin listener must never be exposed)")
    policy = one(objects, "NetworkPolicy", "model-router")
    admin_rules = [r for r in policy.get("spec", {}).get("ingress", []) if any(p.get("port") == "admin" for p in r.get("ports", []))]
    check(admin_rules and all(r.get("from") for r in admin_rules), "the NetworkPolicy must restrict who reaches the admin port")
    front_ports = {p.get("port") for r in policy.get("spec", {}).get("ingress", []) if not r.get("from") for p in r.get("ports", [])}
    check({"http", "grpc"} <= front_ports, "the NetworkPolicy must let the cluster reach the http and grpc ports")

    runtime = next((d for d in kserve if d["kind"] == "ClusterServingRuntime"), {})
    spec = runtime.get("spec", {})
    check(runtime.get("apiVersion") == "serving.kserve.io/v1alpha1", "ClusterServingRuntime must be serving.kserve.io/v1alpha1")
    check(any(f.get("name") == "onnx" and f.get("autoSelect") for f in spec.get("supportedModelFormats", [])),
          "the runtime must support (and auto-select) the onnx format")
    check("v2" in spec.get("protocolVersions", []), "the runtime must speak the v2 protocol")
    (kserve_container,) = spec.get("containers", [{}])
    check(kserve_container.get("name") == "kserve-container", "KServe's runtime container must be named kserve-container")
    kserve_env = {e["name"]: e.get("value") for e in kserve_container.get("env", [])}
    kserve_args = check_container("ClusterServingRuntime", kserve_container, kserve_env)
    check(flag(kserve_args, "--repo") == "/mnt/models", "the runtime must serve /mnt/models, where KServe mounts the storageUri")
    check(flag(kserve_args, "--addr") == "0.0.0.0:8080", "KServe sends traffic to port 8080")
    isvc = next((d for d in kserve if d["kind"] == "InferenceService"), {})
    model = isvc.get("spec", {}).get("predictor", {}).get("model", {})
    check(model.get("runtime") == runtime.get("metadata", {}).get("name"), "the InferenceService must name the runtime")
    check(model.get("modelFormat", {}).get("name") == "onnx", "the InferenceService's model format must be onnx")
    check(model.get("storageUri", "").startswith(f"pvc://{claim}/"), "the InferenceService must use the repository claim")

    readme = args.readme.read_text()
    for name in list(env) + list(kserve_env):
        check(f"`{name}`" in readme, f"{name} is set but not documented in {args.readme}")

    if failures:
        print("check-kubernetes: FAILED")
        for failure in failures:
            print(f"  - {failure}")
        sys.exit(1)
    print("check-kubernetes: probes, sizing, volumes, admin exposure, KServe runtime: all consistent")


if __name__ == "__main__":
    main()
