#!/usr/bin/env bash
# The test command of the README: installs the system packages the tests
# need (deploy/install-deps.sh, idempotent), then runs every test of the
# workspace, the end-to-end tests included (they need root: network
# namespaces). Extra arguments go to `cargo test`, e.g.
#
#   sudo ./deploy/test.sh                       # everything
#   sudo ./deploy/test.sh -p weft-tests --test overlay
#
# CI (.ci/run) runs exactly this command.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "test: the end-to-end tests create network namespaces; run as root (sudo $0)" >&2
  exit 1
fi
./deploy/install-deps.sh
# The end-to-end tests run the real binaries (weft-agent, weft-controller,
# weftctl, ...) from target/: build them all first, so a single test file
# (`-p weft-tests --test overlay`) works on a fresh clone too.
cargo build --workspace --bins --locked
if (($#)); then
  exec cargo test --locked "$@"
fi
exec cargo test --workspace --locked
