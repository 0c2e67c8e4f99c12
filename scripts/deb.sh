#!/usr/bin/env bash
# Builds the Debian package, target/debian/prefixfs_VERSION_ARCH.deb: the binary, the man
# pages and shell completions generated from its CLI definition, mount.prefixfs and the
# systemd unit (see [package.metadata.deb] in Cargo.toml). Install: dpkg -i target/debian/*.deb
#
# PROFILE picks the cargo profile (default release); the test script packages the binary it
# has built already (dev) rather than compile everything a second time.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
command -v cargo-deb >/dev/null || cargo install --locked --quiet cargo-deb --version 3.8.0
cargo build --locked --profile "$profile" --bin prefixfs
case "$profile" in dev) dir=debug ;; *) dir=$profile ;; esac
rm -rf target/assets
"target/$dir/prefixfs" generate target/assets
cargo deb --locked --no-build --profile "$profile" "$@"
