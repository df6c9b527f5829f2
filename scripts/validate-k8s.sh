#!/usr/bin/env bash
# Validates deploy/k8s/*.yaml offline: every resource against the Kubernetes OpenAPI
# schemas shipped by kubernetes-validate (PyPI; strict: unknown fields fail), then the
# cross-resource rules a schema cannot see (selectors that select, probes on declared
# ports, grace period above the drain bound, dns:// targets naming headless Services).
#
#   scripts/validate-k8s.sh [K8S_VERSION [DIR]]     (default 1.30.0 deploy/k8s)
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-1.30.0}
dir=${2:-deploy/k8s}
validator_version=1.37.0
venv=target/validate-k8s-venv

if [ ! -x "$venv/bin/kubernetes-validate" ] \
   || [ "$("$venv/bin/pip" show kubernetes-validate 2>/dev/null | awk '/^Version:/ {print $2}')" != "$validator_version" ]; then
  echo "validate-k8s: installing kubernetes-validate==$validator_version into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$validator_version"
fi

"$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "$dir"/*.yaml

"$venv/bin/python" - "$dir"/*.yaml <<'PY'
import sys
import yaml

docs = []
for path in sys.argv[1:]:
    with open(path) as f:
        docs += [(path, d) for d in yaml.safe_load_all(f) if d]

errors = []
def fail(path, doc, msg):
    errors.append(f"{path}: {doc['kind']}/{doc['metadata']['name']}: {msg}")

def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())

deployments = [(p, d) for p, d in docs if d["kind"] == "Deployment"]
services = {d["metadata"]["name"]: (p, d) for p, d in docs if d["kind"] == "Service"}
pods = [d["spec"]["template"]["metadata"]["labels"] for _, d in deployments]

for path, d in deployments:
    spec = d["spec"]["template"]["spec"]
    if not selects(d["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]):
        fail(path, d, "selector does not match the pod template's labels")
    for c in spec["containers"]:
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        ports = {p["containerPort"] for p in c.get("ports", [])} | {p.get("name") for p in c.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe not in c:
                fail(path, d, f"container {c['name']} has no {probe}")
                continue
            kind = next(k for k in ("grpc", "httpGet", "tcpSocket", "exec") if k in c[probe])
            if kind == "tcpSocket":
                fail(path, d, f"{probe} is a TCP connect: use the gRPC health status")
            port = c[probe][kind].get("port")
            if port is not None and port not in ports:
                fail(path, d, f"{probe} probes port {port}, not a declared container port")
        if "requests" not in c.get("resources", {}):
            fail(path, d, f"container {c['name']} has no resource requests")
        drain = int(env.get("VOXWIRE_DRAIN_SECONDS") or 10)
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace <= drain:
            fail(path, d, f"terminationGracePeriodSeconds {grace} does not exceed the drain bound {drain}")
        for var in ("VOXWIRE_TTS", "VOXWIRE_STT"):
            for target in filter(None, (env.get(var) or "").split(",")):
                if not target.startswith("dns://"):
                    continue
                name, _, port = target[len("dns://"):].partition(":")
                svc = services.get(name.split(".")[0])
                if svc is None:
                    fail(path, d, f"{var} names {name}, which no Service here defines")
                elif svc[1]["spec"].get("clusterIP") != "None":
                    fail(path, d, f"{var} names Service {name}, which is not headless (one address, not one per pod)")
                elif int(port) not in [p["port"] for p in svc[1]["spec"]["ports"]]:
                    fail(path, d, f"{var} port {port} is not a port of Service {name}")

for path, d in docs:
    if d["kind"] in ("Service", "PodDisruptionBudget"):
        sel = d["spec"]["selector"]
        sel = sel.get("matchLabels", sel) if d["kind"] == "PodDisruptionBudget" else sel
        if not any(selects(sel, labels) for labels in pods):
            fail(path, d, "selector selects no Deployment's pods")
for path, d in deployments:
    labels = d["spec"]["template"]["metadata"]["labels"]
    if not any(selects(p["spec"]["selector"]["matchLabels"], labels)
               for _, p in docs if p["kind"] == "PodDisruptionBudget"):
        fail(path, d, "no PodDisruptionBudget covers its pods")

for e in errors:
    print("ERROR", e, file=sys.stderr)
if errors:
    sys.exit(1)
print(f"validate-k8s: {len(docs)} resources in {len(sys.argv) - 1} files: schemas and cross-checks pass")
PY
