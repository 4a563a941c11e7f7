#!/usr/bin/env bash
# Create the test cluster's PKI with openssl, once (idempotent): a CA; the apiserver's serving
# cert; client certs for the admin (system:masters), the controller manager and the apiserver's
# calls to the "kubelet" (the node agent); the node agent's serving cert (IP SAN 127.0.0.1, so
# the apiserver can verify it); the service-account key pair; and a static admin token.
set -euo pipefail
LK_NAME=pki
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
P="$KUBE_RUN/pki"
if [ -s "$P/done" ]; then exit 0; fi
step "generating PKI in $P"
mkdir -p "$P"
cd "$P"
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=stashflow-localkube-ca" \
  -keyout ca.key -out ca.crt 2>/dev/null
cert() { # name subject [serving SANs]
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  if [ -n "${3:-}" ]; then printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$3" > "$1.ext"
  else printf 'extendedKeyUsage=clientAuth\n' > "$1.ext"; fi
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
cert apiserver "/CN=kube-apiserver" \
  "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin "/O=system:masters/CN=localkube-admin"
cert kcm "/CN=system:kube-controller-manager"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
cert node-agent "/CN=localkube-node-agent" "IP:127.0.0.1,DNS:localhost"
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
echo "localkube-admin-token,localkube-admin-token,1000,system:masters" > tokens.csv
chmod 644 ./*.crt sa.pub
date -u +%FT%TZ > done
