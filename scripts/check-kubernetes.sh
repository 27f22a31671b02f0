#!/usr/bin/env bash
# Offline checks of the Kubernetes deployment (deploy/kubernetes: a Kustomize
# base for `serve`, and the KServe ClusterServingRuntime in kserve/):
#
#   - rendering: the base's resources as Kustomize renders them; when kubectl
#     is installed, `kubectl kustomize` too, compared object by object
#   - kubernetes-validate (deploy/requirements-kubernetes.txt, hash-pinned):
#     every built-in object against the Kubernetes API's JSON schemas, strict
#   - scripts/check_kubernetes.py: probes, memory vs MODEL_CACHE_BYTES,
#     sessions vs CPUs, volumes, admin exposure, the KServe runtime, docs
#   - checkov's Kubernetes checks (infra/requirements-checkov.txt), every skip
#     an annotation with its reason on the object it skips
#
# Not checked here (no registry ships them): `helm lint`/`helm template` (there
# is no chart: the base is Kustomize), KServe's own CRD schemas, and a real
# cluster (`kubectl apply --dry-run=server` needs one).
#
#   scripts/check-kubernetes.sh
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
log() { printf 'check-kubernetes: %s\n' "$*"; }
t=$SECONDS

PY="$(VENV_DIR="$REPO_ROOT/.venv-kubernetes/validate" scripts/python-env.sh deploy/requirements-kubernetes.txt | tail -1)"

compare=()
if command -v kubectl >/dev/null 2>&1; then
    rendered="$(mktemp)"
    trap 'rm -f "$rendered"' EXIT
    kubectl kustomize deploy/kubernetes >"$rendered"
    log "kubectl kustomize: $(grep -c '^kind:' "$rendered") objects ($(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p'))"
    compare=(--kustomize-output "$rendered")
else
    log "kubectl not installed: the base is rendered by check_kubernetes.py alone"
fi
"$PY" scripts/check_kubernetes.py --base deploy/kubernetes --readme README.md "${compare[@]}"

# checkov: the one check-infra.sh installed, else a venv of its own.
checkov="${INFRA_VENV_DIR:-$REPO_ROOT/.venv-infra}/checkov/bin/checkov"
if [[ ! -x "$checkov" ]]; then
    checkov="$(dirname "$(VENV_DIR="$REPO_ROOT/.venv-kubernetes/checkov" scripts/python-env.sh infra/requirements-checkov.txt | tail -1)")/checkov"
fi
log "checkov $("$checkov" --version) (kubernetes framework)"
"$checkov" --directory deploy/kubernetes --framework kubernetes --quiet --compact --skip-download
log "passed ($((SECONDS - t)) s)"
