#!/usr/bin/env bash
# Runs the official-SDK compatibility tests against the NEWEST releases on
# PyPI instead of the pins in crates/cli/tests/compat/requirements.txt.
# Use it to see whether a new SDK release still works before moving the pins.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
venv=${STOWAGE_SDK_NEWEST_VENV:-/var/tmp/stowage-sdk-newest}
python3 -m venv --clear "$venv"
pkgs=$(sed -n 's/^\([A-Za-z0-9_.-]*\)==[^ ]* *# import:.*/\1/p' crates/cli/tests/compat/requirements.txt)
"$venv/bin/pip" install -q --disable-pip-version-check --upgrade $pkgs
"$venv/bin/pip" freeze
STOWAGE_SDK_VENV="$venv" STOWAGE_SDK_UNPINNED=1 cargo test -p stowage --test e2e --locked -- sdk::
