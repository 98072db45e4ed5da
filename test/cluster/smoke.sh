#!/usr/bin/env bash
# Checks the cluster of test/cluster/up.sh: a Deployment of two hello pods
# reaches Ready, its ClusterIP Service answers from the node and from a pod
# (both pods in turn), a pod reaches the API server through the kubernetes
# Service, and `kubectl exec` and `logs` work. Leaves the workload in place
# (down.sh deletes it first).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ -e /run/netns/$NETNS ]] || die "no cluster: run test/cluster/up.sh"

kubectl_admin apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      containers:
      - name: hello
        image: detour.local/hello:1
        imagePullPolicy: Never
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  selector: {app: hello}
  ports: [{port: 80, targetPort: 8080}]
EOF
say "hello Deployment and Service applied"
kubectl_admin rollout status deployment/hello --timeout=90s >/dev/null
kubectl_admin wait --for=condition=Ready pod -l app=hello --timeout=60s >/dev/null
say "pods Ready: $(kubectl_admin get pods -l app=hello -o jsonpath='{range .items[*]}{.metadata.name}={.status.podIP} {end}')"

ip=$(kubectl_admin get service hello -o jsonpath='{.spec.clusterIP}')
have_endpoints() { [[ $(kubectl_admin get endpointslices -l kubernetes.io/service-name=hello -o jsonpath='{.items[*].endpoints[*].addresses[*]}' | wc -w) == 2 ]]; }
wait_until 30 "two endpoints for hello" have_endpoints

# Every request goes through kube-proxy's DNAT; 20 of them reach both pods.
seen=$(for _ in $(seq 20); do in_ns curl -sf --max-time 3 "http://$ip/"; done | sort -u | wc -l)
((seen == 2)) || die "from the node, http://$ip/ reached $seen pod(s), want 2"
say "ClusterIP $ip from the node: both pods answer"

pod=$(kubectl_admin get pods -l app=hello -o jsonpath='{.items[0].metadata.name}')
# No cluster DNS: from a pod, by IP.
out=$(kubectl_admin exec "$pod" -- /hello -get "http://$ip/")
[[ $out == "hello from hello-"* ]] || die "from pod $pod, http://$ip/: $out"
say "ClusterIP $ip from pod $pod (kubectl exec): $out"

out=$(kubectl_admin exec "$pod" -- /hello -insecure -get "https://$API_SERVICE_IP/healthz")
[[ $out == ok ]] || die "from pod $pod, the API server at https://$API_SERVICE_IP: $out"
say "API server from pod $pod through https://$API_SERVICE_IP: $out"

kubectl_admin logs "$pod" | grep -q 'serving on' || die "kubectl logs $pod"
say "kubectl logs works"
say "smoke test passed"
