#!/usr/bin/env bash
# The README's test command. Where /dev/kvm exists, a KVM that cannot be used is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -e /dev/kvm ]; then
  export KVM_MSR_REQUIRE_KVM=1
fi
cargo test --workspace --locked
