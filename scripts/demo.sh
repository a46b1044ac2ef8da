#!/usr/bin/env bash
# xlb end to end on one machine: a Kubernetes control plane (etcd + kube-apiserver built from Go
# modules), xlb-ccm, and an xlbd load balancer in network namespaces, with three "nodes" serving
# a NodePort. A `type: LoadBalancer` Service gets a VIP from xlb-ccm, xlbd balances a client's
# requests across the nodes, and xlbctl shows the live counters.
#
#   client ns ──veth── lb ns (xlbd, eBPF on tcx) ──veth── seg ns (bridge) ──veth── node1..3 ns
#   root ns ──veth (management network: xlbd API, token auth)── lb ns
#
# Usage: scripts/demo.sh          run the demo and clean up
#        KEEP=1 scripts/demo.sh   leave everything running (scripts/demo.sh clean removes it)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/bin
P=xdemo                      # prefix of every namespace and link
WORK=/run/xlb-demo
NODES=3
NODEPORT=30080
VIP_POOL=198.19.0.0/24       # routed from the client to the load balancer
API=10.250.0.2:7470          # xlbd API on the management network

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ns() { ip netns exec "$P-$1" "${@:2}"; }

cleanup() {
	set +e
	for pidf in "$WORK"/*.pid; do
		[ -e "$pidf" ] || continue
		pid=$(cat "$pidf")
		# Only processes this script started, by PID.
		kill "$pid" 2>/dev/null
		for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null
		rm -f "$pidf"
	done
	for n in client lb seg $(seq -f node%g 1 $NODES); do ip netns del "$P-$n" 2>/dev/null; done
	ip link del "$P-m0" 2>/dev/null
	if mountpoint -q "$WORK/bpffs"; then umount "$WORK/bpffs"; fi
	rm -rf "$WORK"
}

if [ "${1:-}" = clean ]; then cleanup; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "the demo needs root (network namespaces, eBPF)"; exit 1; }
for b in xlbd xlbctl xlb-ccm whoami kube-apiserver etcd kubectl; do
	[ -x "$BIN/$b" ] || { echo "missing $BIN/$b: run 'make demo'"; exit 1; }
done
cleanup
[ -n "${KEEP:-}" ] || trap cleanup EXIT
mkdir -p "$WORK"

start() { # start NAME CMD... : run in the background, log to $WORK/NAME.log, remember the PID
	local name=$1; shift
	"$@" >"$WORK/$name.log" 2>&1 &
	echo $! >"$WORK/$name.pid"
	disown # no "Killed" job notices at cleanup
}

wait_for() { # wait_for SECONDS DESCRIPTION CMD...
	local t=$1 what=$2; shift 2
	for _ in $(seq $((t * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
	echo "timed out waiting for $what"; return 1
}

say "network: client, load balancer, L2 segment, $NODES nodes (namespaces $P-*)"
for n in client lb seg $(seq -f node%g 1 $NODES); do ip netns add "$P-$n"; ns "$n" ip link set lo up; done
ip link add "$P-c" netns "$P-client" type veth peer name "$P-lc" netns "$P-lb"
ip link add "$P-lb0" netns "$P-lb" type veth peer name "$P-sl" netns "$P-seg"
ns seg ip link add br0 type bridge
ns seg ip link set br0 up
ns seg ip link set "$P-sl" master br0 up
ns client ip addr add 10.250.1.2/24 dev "$P-c"
ns client ip link set "$P-c" up
ns client ip route add default via 10.250.1.1
ns lb ip addr add 10.250.1.1/24 dev "$P-lc"
ns lb ip addr add 10.250.2.1/24 dev "$P-lb0"
ns lb ip link set "$P-lc" up
ns lb ip link set "$P-lb0" up
ns lb sysctl -qw net.ipv4.ip_forward=1
for i in $(seq 1 $NODES); do
	ip link add "$P-n$i" netns "$P-node$i" type veth peer name "$P-s$i" netns "$P-seg"
	ns seg ip link set "$P-s$i" master br0 up
	ns "node$i" ip addr add "10.250.2.1$i/24" dev "$P-n$i"
	ns "node$i" ip link set "$P-n$i" up
	ns "node$i" ip route add default via 10.250.2.1
	# Each node serves the NodePort and answers with its own name (kube-proxy's job on a real node).
	start "node$i" ip netns exec "$P-node$i" "$BIN/whoami" -name "node$i" -listen ":$NODEPORT" -health-listen ":10256"
done
# Management network: the root namespace (where xlb-ccm runs) reaches the xlbd API.
ip link add "$P-m0" type veth peer name "$P-m1" netns "$P-lb"
ip addr add 10.250.0.1/30 dev "$P-m0"
ip link set "$P-m0" up
ns lb ip addr add 10.250.0.2/30 dev "$P-m1"
ns lb ip link set "$P-m1" up

say "xlbd: eBPF load balancer on $P-lc and $P-lb0 (tcx), API on $API with a bearer token"
head -c 24 /dev/urandom | base64 >"$WORK/xlbd.token"
mkdir -p "$WORK/bpffs" "$WORK/xlbd-state"
# A private bpffs outside /sys: `ip netns exec` remounts /sys, so pins must live elsewhere.
mount -t bpf bpf "$WORK/bpffs"
start xlbd ip netns exec "$P-lb" "$BIN/xlbd" --interfaces "$P-lc,$P-lb0" --hook tcx \
	--api-listen "$API" --api-token-file "$WORK/xlbd.token" --state-dir "$WORK/xlbd-state" \
	--bpffs-path "$WORK/bpffs/xlb" --conntrack-flows 65536
export XLB_SERVER=http://$API XLB_TOKEN_FILE=$WORK/xlbd.token
wait_for 30 "xlbd ready" curl -sf "http://$API/readyz"
"$BIN/xlbctl" get status

say "Kubernetes control plane: etcd + kube-apiserver on loopback"
mkdir -p "$WORK/kube/certs"
KTOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$KTOKEN,xlb-admin,xlb-admin,\"system:masters\"" >"$WORK/kube/tokens.csv"
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/kube/sa.key" 2>/dev/null
openssl ec -in "$WORK/kube/sa.key" -pubout -out "$WORK/kube/sa.pub" 2>/dev/null
start etcd "$BIN/etcd" --name demo --data-dir "$WORK/kube/etcd" --listen-client-urls http://127.0.0.1:23790 \
	--advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800 \
	--initial-advertise-peer-urls http://127.0.0.1:23800 --initial-cluster demo=http://127.0.0.1:23800 \
	--unsafe-no-fsync --log-level warn
wait_for 30 "etcd" curl -sf http://127.0.0.1:23790/health
start kube-apiserver "$BIN/kube-apiserver" --etcd-servers http://127.0.0.1:23790 --bind-address 127.0.0.1 \
	--advertise-address 127.0.0.1 --secure-port 26443 --cert-dir "$WORK/kube/certs" \
	--service-account-key-file "$WORK/kube/sa.pub" --service-account-signing-key-file "$WORK/kube/sa.key" \
	--service-account-issuer https://kubernetes.default.svc.cluster.local \
	--service-cluster-ip-range 10.96.0.0/16 --token-auth-file "$WORK/kube/tokens.csv" \
	--authorization-mode RBAC --endpoint-reconciler-type none --profiling=false
wait_for 90 "kube-apiserver" curl -skf -H "Authorization: Bearer $KTOKEN" https://127.0.0.1:26443/readyz
cat >"$WORK/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: demo, cluster: {server: "https://127.0.0.1:26443", certificate-authority: "$WORK/kube/certs/apiserver.crt"}}]
users: [{name: admin, user: {token: "$KTOKEN"}}]
contexts: [{name: demo, context: {cluster: demo, user: admin}}]
current-context: demo
EOF
export KUBECONFIG=$WORK/kubeconfig
kc() { "$BIN/kubectl" "$@"; }
wait_for 30 "default namespace" kc get namespace default

say "xlb-ccm: the cloud-controller-manager with --cloud-provider=xlb"
cat >"$WORK/cloud-config.yaml" <<EOF
clusterName: demo
dataplanes:
  - name: lb1
    endpoint: http://$API
    tokenFile: $WORK/xlbd.token
pools:
  - name: public
    cidrs: [$VIP_POOL]
    default: true
defaults:
  algorithm: rr                   # the probe stays the default: kube-proxy's /healthz on :10256
EOF
cat "$WORK/cloud-config.yaml"
start xlb-ccm "$BIN/xlb-ccm" --cloud-provider=xlb --cloud-config "$WORK/cloud-config.yaml" \
	--kubeconfig "$KUBECONFIG" --cluster-name demo --leader-elect=false \
	--use-service-account-credentials=false --secure-port=0 --controllers=service \
	--authentication-skip-lookup=true

say "three nodes and a type: LoadBalancer Service"
for i in $(seq 1 $NODES); do
	cat <<EOF
---
apiVersion: v1
kind: Node
metadata: {name: node$i}
status:
  addresses: [{type: InternalIP, address: 10.250.2.1$i}]
EOF
done | kc apply -f - >/dev/null
kc get nodes
cat <<EOF | kc apply -f -
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: $NODEPORT, protocol: TCP}]
EOF
vip=""
for _ in $(seq 300); do
	vip=$(kc get svc web -o jsonpath='{.status.loadBalancer.ingress[0].ip}' 2>/dev/null || true)
	[ -n "$vip" ] && break
	sleep 0.1
done
[ -n "$vip" ] || { echo "no external IP: see $WORK/xlb-ccm.log"; tail -20 "$WORK/xlb-ccm.log"; exit 1; }
kc get svc web
ns client ip route add "$VIP_POOL" via 10.250.1.1 2>/dev/null || true

say "12 requests from the client namespace to http://$vip/ (each node answers with its name)"
for i in $(seq 12); do
	ns client curl -s --max-time 2 "http://$vip/" || echo "request $i failed"
done | tee "$WORK/answers.txt"
echo
echo "answers per node:"; awk '{print $1}' "$WORK/answers.txt" | sort | uniq -c

say "xlbctl get services (live counters from the eBPF maps)"
"$BIN/xlbctl" get services
say "xlbctl get service (per-backend view)"
"$BIN/xlbctl" get service "$("$BIN/xlbctl" get services -o json | jq -r '.items[0].name')"

say "node2 dies: the health probe takes it out of selection (default probe: every 500 ms, 3 failures)"
svcname=$("$BIN/xlbctl" get services -o json | jq -r '.items[0].name')
node_state() { "$BIN/xlbctl" get service "$svcname" -o json | jq -r ".status.backends[] | select(.address==\"$1\") | .state"; }
kill "$(cat "$WORK/node2.pid")"; rm -f "$WORK/node2.pid"
t0=$(date +%s%N)
wait_for 15 "node2 marked down" bash -c "[ \"\$('$BIN/xlbctl' get service $svcname -o json | jq -r '.status.backends[] | select(.address==\"10.250.2.12\") | .state')\" = down ]"
echo "node2 marked down after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
for i in $(seq 8); do
	ns client curl -s --max-time 2 "http://$vip/" || echo "request $i failed"
done | tee "$WORK/answers2.txt"
echo "answers per node:"; awk '{print $1}' "$WORK/answers2.txt" | sort | uniq -c
"$BIN/xlbctl" get service "$svcname" | tail -4

say "delete the Service: the VIP is released and stops answering"
kc delete svc web --wait=true >/dev/null
count() { "$BIN/xlbctl" get services -o json | jq '.items | length'; }
wait_for 30 "dataplane service removed" bash -c "[ \"\$('$BIN/xlbctl' get services -o json | jq '.items | length')\" = 0 ]"
if ns client curl -s --max-time 1 "http://$vip/" >/dev/null; then echo "VIP still answers!"; exit 1; fi
echo "http://$vip/ no longer answers; xlbd holds $(count) services"

if [ -n "${KEEP:-}" ]; then
	say "left running (KEEP=1). Try: ip netns exec $P-client curl http://<vip>/ ; export KUBECONFIG=$KUBECONFIG XLB_SERVER=$XLB_SERVER XLB_TOKEN_FILE=$XLB_TOKEN_FILE; scripts/demo.sh clean"
else
	say "done; cleaning up"
fi
