#!/usr/bin/env bash
# Installs the Debian packages xlb needs to build, test and demo. Idempotent:
# packages already present are skipped, so re-runs cost one dpkg query.
set -euo pipefail
PKGS=(clang llvm libbpf-dev bpftool iproute2 nftables ethtool iputils-ping curl
      conntrack tcpdump iperf3 wrk bird2 openssl jq)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
