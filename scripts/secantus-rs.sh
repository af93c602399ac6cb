#!/usr/bin/env bash
# Builds the Rust SecantusDB server (a MongoDB-compatible test server; see
# docs/testing.md) once and caches it outside the clone. The build compiles
# WiredTiger from C: ~24 minutes on 2 cores, so it is kept between runs.
# Prints the binary's path. Needs cmake (installed here when missing, as root).
set -euo pipefail
VERSION=0.5.3-beta.196
PREFIX="${STOWAGE_SECANTUS_RS_PREFIX:-/var/tmp/stowage-secantus-rs-$VERSION}"
BIN="$PREFIX/bin/secantusd-rs"
if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi
if ! command -v cmake >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "cmake is missing (apt-get install cmake)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq cmake >/dev/null
fi
echo "building secantusd-rs $VERSION into $PREFIX (one time, ~24 min on 2 cores)" >&2
# Its own target dir, so the workspace's build cache is not touched; the
# crate declares rust-version 1.98 but builds with older toolchains.
tmp="$PREFIX.build"
mkdir -p "$tmp"
CARGO_TARGET_DIR="$tmp/target" cargo install secantus-mdb --version "$VERSION" \
  --locked --ignore-rust-version --root "$tmp/root" >&2 \
  || CARGO_TARGET_DIR="$tmp/target" cargo install secantus-mdb --version "$VERSION" \
  --ignore-rust-version --root "$tmp/root" >&2
mkdir -p "$PREFIX/bin"
install -m 0755 "$tmp/root/bin/secantusd-rs" "$BIN.part"
mv "$BIN.part" "$BIN"
rm -rf "$tmp"
echo "$BIN"
