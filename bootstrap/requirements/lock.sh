#!/usr/bin/env bash
# Re-lock the hosts' Python packages: exact versions with every wheel's hash, for the
# Pythons a host may run the service with (3.10 and newer). A host installs
# them with `pip install --require-hashes`: what a replica boots with is what was
# reviewed here, not whatever the index serves on the day it boots.
#   bootstrap/requirements/lock.sh        (needs uv: pip install uv)
set -euo pipefail
cd "$(dirname "$0")"
for name in service boot; do
  uv pip compile --quiet --universal --python-version 3.10 --generate-hashes \
    --no-header --custom-compile-command "bootstrap/requirements/lock.sh" \
    "$name.in" -o "$name.txt"
done
