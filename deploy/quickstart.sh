#!/usr/bin/env bash
# Quickstart: installs what is missing, builds weft, and brings up a simulated
# 3-host cluster (in network namespaces; the machine's own network is not
# touched): etcd, a controller, three agents and three namespaces per host,
# then shows every namespace reaching every other one across the VXLAN
# overlay and, through weft's NAT, a simulated internet.
#
#   sudo ./deploy/quickstart.sh          # bring it up
#   sudo ./deploy/quickstart.sh down     # remove everything again
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "quickstart: weft creates network namespaces; run as root (sudo $0)" >&2
  exit 1
fi
dir=${WEFT_LAB_DIR:-/tmp/weft-lab/quickstart}
if [ "${1:-up}" = down ]; then
  exec target/release/weft-lab down --dir "$dir"
fi
./deploy/install-deps.sh
cargo build --release --workspace --bins
if [ -e "$dir/lab.json" ]; then
  target/release/weft-lab down --dir "$dir"
fi
target/release/weft-lab up --hosts "${WEFT_LAB_HOSTS:-3}" --ns-per-host "${WEFT_LAB_NS:-3}" --dir "$dir"
cat <<EOT

The lab keeps running. Try:
  target/release/weft-lab status --dir $dir
  target/release/weftctl --agent-socket $dir/h1/run/agent.sock ns list
  target/release/weftctl --agent-socket $dir/h1/run/agent.sock status
  target/release/weftctl --agent-socket $dir/h1/run/agent.sock ns exec h1-n1 -- ping -c 1 203.0.113.2
Remove it with: sudo $0 down
EOT
