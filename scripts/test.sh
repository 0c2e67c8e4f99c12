#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with a Rust toolchain:
# installs what the tests need, then checks formatting and lints and runs every test
# (unit tests, the embedded S3 server, real FUSE mounts, and the same mount tests on moto).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
command -v rsync >/dev/null || need_apt+=(rsync)
command -v setfattr >/dev/null || need_apt+=(attr)
command -v man >/dev/null || need_apt+=(man-db)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "please install: ${need_apt[*]} (sudo apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
fi
if ! python3 -c 'import moto.server, flask' 2>/dev/null; then
  echo "installing moto[server] (an independent S3 implementation the mount tests also run against)"
  python3 -m pip install -q 'moto[server]>=5,<6'
fi
if ! command -v fsx >/dev/null; then
  echo "installing fsx (the file-system exerciser the write tests run)"
  cargo install --locked --quiet fsx
fi
if ! command -v pjdfstest >/dev/null; then
  echo "installing pjdfstest (the POSIX suite tests/conformance.rs gates on)"
  cargo install --locked --quiet pjdfstest
fi
if [ ! -e /dev/fuse ]; then
  echo "/dev/fuse is missing: the mount tests need FUSE (modprobe fuse)" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "the mount tests mount and unmount FUSE filesystems: run them as root" >&2
  exit 1
fi

# A second local user, to show that nothing prefixfs keeps locally is readable by others.
id prefixfs-other >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin prefixfs-other

# The Debian package of the binary the tests build, installed as a user would
# (tests/package.rs checks its files, its man pages and a mount through mount(8)).
echo "building and installing the Debian package"
deb=$(PROFILE=dev ./scripts/deb.sh | tail -n 1)
dpkg -i "$deb" >/dev/null

# Tests talk only to servers on 127.0.0.1: never let the AWS SDK probe instance metadata.
export AWS_EC2_METADATA_DISABLED=true
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
