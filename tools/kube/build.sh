#!/usr/bin/env bash
# Builds the Kubernetes control plane that xlb's tests and demo run against, from Go modules:
#   bin/kube-apiserver-<v>, bin/kubectl-<v>  (from tools/kube/go.mod, k8s.io/kubernetes)
#   bin/etcd-<v>, bin/etcdctl-<v>           (from tools/kube/etcd/go.mod, go.etcd.io/etcd)
# plus unversioned symlinks (bin/kube-apiserver -> kube-apiserver-v1.37.2, ...).
#
# Idempotent and keyed by version: a binary that already exists is not rebuilt, so a re-run is
# instant. Versions come from the go.mod files, so bumping a version there is all it takes.
#
# Usage: tools/kube/build.sh [all|kube-apiserver|kubectl|etcd|etcdctl]...   (default: all)
# Env:   XLB_KUBE_BIN_DIR  output directory (default: <repo>/bin)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${XLB_KUBE_BIN_DIR:-$repo/bin}"
mkdir -p "$out"

modversion() { # modversion <dir> <module path>
	(cd "$1" && go list -m -f '{{.Version}}' "$2")
}

# build <name> <module dir> <version> <package> [ldflags...]
build() {
	local name="$1" dir="$2" version="$3" pkg="$4" ldflags="${5:-}"
	local target="$out/$name-$version"
	if [[ ! -x "$target" ]]; then
		echo "building $name $version -> $target" >&2
		local start=$SECONDS
		# Build to a temporary name and rename, so an interrupted build never leaves a
		# half-written binary that a later run would take for a finished one.
		(cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$target.tmp.$$" "$pkg")
		mv -f "$target.tmp.$$" "$target"
		echo "built $name in $((SECONDS - start))s" >&2
	fi
	ln -sfn "$name-$version" "$out/$name"
}

kube_version="$(modversion "$here" k8s.io/kubernetes)"
etcd_version="$(modversion "$here/etcd" go.etcd.io/etcd/server/v3)"
# kube-apiserver reports its version from these; without them it says v0.0.0 and clients warn.
kube_ldflags="-X k8s.io/component-base/version.gitVersion=$kube_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$kube_version" | cut -d. -f2)"

# One build at a time per output directory: two engineers (or make -j) running this together
# would otherwise both spend ~6 minutes building the same binary.
exec 9>"$out/.kube-build.lock"
flock 9

targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(all)
for t in "${targets[@]}"; do
	case "$t" in
	all)
		build etcd "$here/etcd" "$etcd_version" go.etcd.io/etcd/server/v3
		build etcdctl "$here/etcd" "$etcd_version" go.etcd.io/etcd/etcdctl/v3
		build kubectl "$here" "$kube_version" k8s.io/kubernetes/cmd/kubectl "$kube_ldflags"
		build kube-apiserver "$here" "$kube_version" k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"
		;;
	etcd) build etcd "$here/etcd" "$etcd_version" go.etcd.io/etcd/server/v3 ;;
	etcdctl) build etcdctl "$here/etcd" "$etcd_version" go.etcd.io/etcd/etcdctl/v3 ;;
	kubectl) build kubectl "$here" "$kube_version" k8s.io/kubernetes/cmd/kubectl "$kube_ldflags" ;;
	kube-apiserver) build kube-apiserver "$here" "$kube_version" k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags" ;;
	*)
		echo "unknown target $t (allowed: all, kube-apiserver, kubectl, etcd, etcdctl)" >&2
		exit 2
		;;
	esac
done
echo "$out: kube-apiserver kubectl $kube_version, etcd etcdctl $etcd_version" >&2
