#!/usr/bin/env bash
# Installs the system packages weft needs to build, run and test. Idempotent:
# packages already present are not fetched again.
set -euo pipefail
pkgs=(
  iproute2             # ip: the test bed builds its simulated hosts with it
  nftables             # nft: weft-agent programs NAT and published ports through it
  iputils-ping         # ping: connectivity checks in tests and weft-lab
  util-linux           # nsenter, mount
  procps               # pgrep/ps for the test bed
  kmod                 # modprobe for bridge/veth/vxlan modules
  protobuf-compiler    # protoc, needed to build etcd-client
  libprotobuf-dev      # the well-known .proto files (google/protobuf/*.proto) etcd-client imports
  etcd-server          # etcd: the cluster state (controller tests, weft-lab)
  etcd-client          # etcdctl: tests read etcd with it, independently of weft
  containernetworking-plugins  # CNI bridge/host-local, the benchmark's reference
  iptables             # the CNI bridge plugin's ipMasq uses it (weft-bench)
  netavark             # podman's network backend, weft-bench attach's second peer
  systemd              # systemd-analyze: tests verify the units in deploy/systemd
  iperf3               # cross-host throughput (weft-bench dataplane)
  ethtool              # tests/tests/dataplane_tuning.rs reads the devices' offload settings
  podman               # real containers on weft's CNI plugin (tests/src/podman.rs; CNI backend)
  runc                 # the OCI runtime podman runs there (listed so apt does not pick crun)
  busybox-static       # the containers' root file system (static: no libraries to copy)
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages ${missing[*]}; run as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The kernel features the agent and the test bed use; loading is harmless if built in.
for m in bridge veth vxlan nf_tables nft_nat nft_fib_inet nft_chain_nat nf_conntrack; do
  modprobe -q "$m" 2>/dev/null || true
done
