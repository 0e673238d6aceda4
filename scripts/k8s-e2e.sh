#!/usr/bin/env bash
# End-to-end check of Switchboard's Kubernetes pools against a real cluster (kind, k3s, or any
# cluster your kubeconfig reaches). Not part of ./scripts/test: the build machines have no cluster.
#
# Usage: scripts/k8s-e2e.sh [KUBECONFIG]      (default: $KUBECONFIG, then ~/.kube/config)
#
# It creates the namespace switchboard-e2e (deleted at the end), applies a Role like
# deploy/kubernetes/rbac.yaml bound to a ServiceAccount whose token the broker uses (so the test
# runs with exactly the documented rights), runs a broker on 127.0.0.1 with a Kubernetes pool, and
# checks through the REST API:
#   1. a session pod starts, becomes Ready, and runs restricted (non-root, no added capabilities);
#   2. asking again returns the same pod at once;
#   3. a template with a missing image fails fast with ErrImagePull/ImagePullBackOff, and the pod is deleted;
#   4. log-off deletes the pod.
# Needs: kubectl, curl, python3, and a cluster that can pull docker.io/library/python:3.12-alpine.
set -euo pipefail
cd "$(dirname "$0")/.."
KCFG="${1:-${KUBECONFIG:-$HOME/.kube/config}}"
NS=switchboard-e2e
K() { kubectl --kubeconfig "$KCFG" "$@"; }
work=$(mktemp -d)
broker_pid=
cleanup() {
  [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null || true
  K delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "==> cluster: $(K config current-context)"
cargo build --release -p switchboard-cli >/dev/null
SB=target/release/switchboard

echo "==> namespace $NS, service account and Role (the documented rights only)"
K create namespace "$NS" >/dev/null
K -n "$NS" create serviceaccount switchboard-broker >/dev/null
sed -e "s/namespace: switchboard-sessions/namespace: $NS/" -e "s/namespace: switchboard$/namespace: $NS/" \
  deploy/kubernetes/rbac.yaml | K apply -f - >/dev/null
token=$(K -n "$NS" create token switchboard-broker --duration=1h)
server=$(K config view --minify -o jsonpath='{.clusters[0].cluster.server}')
K config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d > "$work/ca.crt" || true
cat > "$work/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{ name: e2e, cluster: { server: "$server", certificate-authority: "$work/ca.crt" } }]
users: [{ name: sb, user: { token: "$token" } }]
contexts: [{ name: e2e, context: { cluster: e2e, user: sb, namespace: $NS } }]
current-context: e2e
EOF

mkdir -p "$work/types/default"
cat > "$work/types/default/web.yaml" <<'EOF'
apiVersion: v1
kind: Pod
spec:
  containers:
    - name: session
      image: docker.io/library/python:3.12-alpine
      command: ["python3", "-m", "http.server", "14500"]
      ports: [{ name: session, containerPort: 14500 }]
      readinessProbe: { tcpSocket: { port: 14500 }, periodSeconds: 1 }
      resources: { requests: { cpu: 10m, memory: 32Mi } }
EOF
cat > "$work/types/default/broken.yaml" <<'EOF'
apiVersion: v1
kind: Pod
spec:
  containers:
    - name: session
      image: registry.invalid/switchboard/no-such-image:0
      ports: [{ name: session, containerPort: 14500 }]
EOF

$SB token add "$work/tokens" e2e > "$work/token.txt"
api_token=$(tail -n1 "$work/token.txt")
cat > "$work/broker.toml" <<EOF
data_dir = "$work"
[http]
listen = "127.0.0.1:18480"
[api]
tokens_file = "$work/tokens"
[management]
socket = "$work/mgmt.sock"
[[pool]]
name = "e2e"
kind = "kubernetes"
namespace = "$NS"
kubeconfig = "$work/kubeconfig"
templates = "$work/types"
image_pull_timeout = "3m"
EOF
$SB broker --config "$work/broker.toml" > "$work/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 50); do curl -fsS http://127.0.0.1:18480/healthz >/dev/null 2>&1 && break; sleep 0.2; done

api() { curl -sS -H "Authorization: Bearer $api_token" -H 'content-type: application/json' "$@"; }
fail() { echo "FAIL: $*"; echo "--- broker log"; tail -n 50 "$work/broker.log"; exit 1; }

echo "==> 1. start a session (pull, schedule, readiness)"
t0=$(date +%s)
out=$(api -X POST http://127.0.0.1:18480/api/v1/kubernetes/e2e/sessions -d '{"user":"e2e-user","session_type":"web"}')
echo "    $out ($(( $(date +%s) - t0 )) s)"
echo "$out" | grep -q '"pod":"e2e-user-web"' || fail "no ready pod"
K -n "$NS" get pod e2e-user-web -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -q True || fail "pod not Ready"
caps=$(K -n "$NS" get pod e2e-user-web -o jsonpath='{.spec.containers[0].securityContext.capabilities.drop[0]} {.spec.securityContext.runAsNonRoot} {.spec.automountServiceAccountToken}')
[ "$caps" = "ALL true false" ] || fail "security context: $caps"

echo "==> 2. asking again answers at once with the same pod"
t0=$(date +%s%N)
again=$(api -X POST http://127.0.0.1:18480/api/v1/kubernetes/e2e/sessions -d '{"user":"e2e-user","session_type":"web"}')
echo "    $again ($(( ($(date +%s%N) - t0) / 1000000 )) ms)"
[ "$again" = "$out" ] || fail "a different answer the second time"

echo "==> 3. a missing image fails fast"
t0=$(date +%s)
bad=$(api -X POST http://127.0.0.1:18480/api/v1/kubernetes/e2e/sessions -d '{"user":"e2e-user","session_type":"broken"}')
echo "    $bad ($(( $(date +%s) - t0 )) s)"
echo "$bad" | grep -Eq 'ErrImagePull|ImagePullBackOff|InvalidImageName' || fail "no image error"
sleep 2
K -n "$NS" get pod e2e-user-broken >/dev/null 2>&1 && \
  [ -z "$(K -n "$NS" get pod e2e-user-broken -o jsonpath='{.metadata.deletionTimestamp}')" ] && fail "the broken pod was not deleted"

echo "==> 4. log-off deletes the pod"
code=$(api -o /dev/null -w '%{http_code}' -X DELETE http://127.0.0.1:18480/api/v1/kubernetes/e2e/sessions/e2e-user/web)
[ "$code" = 204 ] || fail "log-off answered $code"

echo "PASS: Kubernetes pool end to end on $(K config current-context)"
