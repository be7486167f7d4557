#!/usr/bin/env bash
# Registers the waypoint with istiod: istiod routes to a waypoint Gateway only once it has status.addresses,
# which an Istio-managed waypoint gets from Istio's controller. This Gateway's Deployment is ours, so set the
# address to the waypoint Service's cluster hostname ourselves: deploy/register.sh NAMESPACE [GATEWAY]
set -euo pipefail
namespace=${1:?usage: register.sh NAMESPACE [GATEWAY]}
gateway=${2:-waypoint}
host="$gateway.$namespace.svc.cluster.local"
kubectl -n "$namespace" patch gateway "$gateway" --subresource=status --type=merge \
  -p "{\"status\":{\"addresses\":[{\"type\":\"Hostname\",\"value\":\"$host\"}],\"conditions\":[{\"type\":\"Programmed\",\"status\":\"True\",\"reason\":\"Programmed\",\"message\":\"waypoint Deployment managed outside Istio\",\"lastTransitionTime\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}]}}"
echo "registered $gateway in $namespace at $host; opt a namespace in with:"
echo "  kubectl label namespace $namespace istio.io/use-waypoint=$gateway"
