#!/usr/bin/env bash
# Build prefixfs and mount a bucket in the foreground (Ctrl-C uploads open files and unmounts).
#   scripts/run.sh                         # the embedded local S3 store, at /tmp/prefixfs-demo
#   scripts/run.sh s3://BUCKET[/ROOT] DIR  # a real bucket (credentials from the AWS chain)
# Extra flags go to `prefixfs mount` (e.g. --endpoint-url, --prefix-count, --init).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ] && ! command -v fusermount3 >/dev/null; then
  echo "non-root mounts need fusermount3: sudo apt-get install fuse3" >&2
  exit 1
fi
cargo build --locked --bin prefixfs
bucket=()
if [ $# -gt 0 ] && [[ "$1" == s3://* ]]; then bucket=("$1"); shift; fi
mnt=${1:-/tmp/prefixfs-demo}
[ $# -gt 0 ] && shift
mkdir -p "$mnt"
echo "mounting ${bucket[*]:-the embedded store} at $mnt; use it from another terminal, Ctrl-C here to unmount"
exec ./target/debug/prefixfs mount "${bucket[@]}" "$mnt" --foreground "$@"
