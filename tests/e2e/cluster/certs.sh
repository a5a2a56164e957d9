#!/bin/bash
# The cluster's certificates and kubeconfigs: one CA, the API server's serving certificate, a client certificate
# per component, and per worker node a kubelet client (system:node:NAME) and serving certificate.
# usage: certs.sh PKI_DIR API_IP KUBECTL NODE_NAME=NODE_IP...
set -euo pipefail
PKI=$1 API_IP=$2 KUBECTL=$3; shift 3
mkdir -p "$PKI"; cd "$PKI"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj "/CN=dcforge-e2e-ca" 2>/dev/null
openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
# cert NAME CN ORG SAN EKU
cert() { local n=$1 cn=$2 o=$3 san=$4 eku=$5 subj="/CN=$2"; [ -n "$o" ] && subj="/O=$o/CN=$cn"
  openssl req -newkey rsa:2048 -nodes -keyout "$n.key" -out "$n.csr" -subj "$subj" 2>/dev/null
  { echo "basicConstraints=CA:FALSE"; echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"; [ -n "$san" ] && echo "subjectAltName=$san"; } > "$n.ext"
  openssl x509 -req -in "$n.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$n.crt" -days 30 \
    -extfile "$n.ext" 2>/dev/null
  rm -f "$n.csr" "$n.ext"; }
kubeconfig() { local n=$1 k="$KUBECTL --kubeconfig=$1.kubeconfig"
  $k config set-cluster e2e --server="https://$API_IP:6443" --certificate-authority=ca.crt --embed-certs >/dev/null
  $k config set-credentials "$n" --client-certificate="$n.crt" --client-key="$n.key" --embed-certs >/dev/null
  $k config set-context e2e --cluster=e2e --user="$n" >/dev/null
  $k config use-context e2e >/dev/null; }
cert apiserver kube-apiserver "" "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:$API_IP,IP:10.97.0.1" serverAuth
cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters "" clientAuth
cert admin dcforge-e2e-admin system:masters "" clientAuth
cert controller-manager system:kube-controller-manager "" "" clientAuth
cert scheduler system:kube-scheduler "" "" clientAuth
cert kube-proxy system:kube-proxy "" "" clientAuth
for c in admin controller-manager scheduler kube-proxy; do kubeconfig $c; done
for pair in "$@"; do
  name=${pair%%=*} ip=${pair#*=}
  cert "kubelet-$name" "system:node:$name" system:nodes "" clientAuth
  cert "kubelet-$name-serving" "$name" "" "DNS:$name,IP:$ip" serverAuth
  kubeconfig "kubelet-$name"
done
rm -f ca.srl
