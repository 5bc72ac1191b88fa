#!/bin/bash
# synthdet replica startup script (rendered by bootstrap/startup_script.py; edits are lost).
#
# Run as root at boot by the cloud's own agent (GCP: the `startup-script` metadata
# key, every boot; AWS: user data, first boot) with nobody logged in. It fetches
# this project's wheel, its locked packages, the model archives and boot.json from the
# stack's bucket, installs them into a small venv of its own (every package pinned and
# hash-checked) and runs the same deploy steps
# `synthdet deploy` runs over SSH (python -m bootstrap.boot_local). Reruns are
# cheap: files already fetched (sha256 checked) and unchanged steps are skipped.
set -euo pipefail
umask 022

SOURCE={{ source }}
CONFIG_OBJECT={{ config_object }}
WHEEL_OBJECT={{ wheel_object }}
WHEEL_SHA256={{ wheel_digest }}
# object sha256 (one a line): the model archives
ARCHIVES={{ archives }}
# The boot venv's packages, pinned with hashes (bootstrap/requirements/boot.txt).
REQUIREMENTS_OBJECT={{ requirements_object }}
REQUIREMENTS_SHA256={{ requirements_digest }}
PIP_ARGS=({{ pip_args }})
ATTEMPTS={{ attempts }}

STATE=/var/lib/synthdet-boot
FILES=$STATE/files
LOG=/var/log/synthdet-boot.log
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_DEFAULT_TIMEOUT=60

mkdir -p "$FILES"
chmod 700 "$STATE"
# Everything to the log file and to the agent (serial console / journal) too.
exec > >(tee -a "$LOG") 2>&1
log() { echo "synthdet-boot: $(date -u +%H:%M:%S) $*"; }
die() { log "FAILED: $*"; exit 1; }

# ---------------------------------------------------------------- fetching
gcs_token() {
  curl -fsS -H 'Metadata-Flavor: Google' \
    http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token |
    "$PY" -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
}

fetch() {  # fetch OBJECT DEST: download SOURCE/OBJECT; non-zero when it cannot
  local object=$1 dest=$2 tmp="$2.part" bucket prefix token
  rm -f "$tmp"
  case "$SOURCE" in
    gs://*)
      # The JSON API with the instance's service-account token: needs no gsutil on the image.
      bucket=${SOURCE#gs://}; prefix=${bucket#*/}; bucket=${bucket%%/*}
      [ "$prefix" = "$bucket" ] && prefix=""
      object=${prefix:+$prefix/}$object
      token=$(gcs_token) || return 1
      curl -fsSL --retry 5 --retry-connrefused -o "$tmp" -H "Authorization: Bearer $token" \
        "https://storage.googleapis.com/storage/v1/b/$bucket/o/$(urlquote "$object")?alt=media" || return 1
      ;;
    s3://*)
      # The instance profile grants s3:GetObject; the AWS CLI signs with it.
      aws_cli s3 cp --only-show-errors "$SOURCE/$object" "$tmp" || return 1
      ;;
    http://*|https://*)
      curl -fsSL --retry 5 --retry-connrefused -o "$tmp" "$SOURCE/$object" || return 1
      ;;
    *) die "unknown source $SOURCE (gs://, s3:// or http(s)://)" ;;
  esac
  mv -f "$tmp" "$dest"
}

urlquote() { "$PY" -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }

fetch_verified() {  # fetch_verified OBJECT SHA256 DEST: skip when DEST already matches
  local object=$1 want=$2 dest=$3
  if [ -f "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$want" ]; then
    return 0
  fi
  log "fetching $object"
  fetch "$object" "$dest" || die "cannot fetch $object from $SOURCE"
  [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$want" ] || { rm -f "$dest"; die "$object: sha256 mismatch"; }
}

aws_cli() {
  # Every AWS Deep Learning AMI carries the AWS CLI; nothing unpinned is installed for it.
  command -v aws >/dev/null 2>&1 || die "the AWS CLI is missing on this image (every AWS Deep Learning AMI has it)"
  aws "$@"
}

# ---------------------------------------------------------------- python
pick_python() {
  # The bootstrap needs Python 3.10+ with venv support (the image's own interpreter).
  local p
  for p in python3 python3.12 python3.11 python3.10; do
    if command -v "$p" >/dev/null 2>&1 &&
       "$p" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      command -v "$p"; return 0
    fi
  done
  return 1
}

PY=$(pick_python) || die "no Python 3.10 or newer on this image"

wait_for_gpu_driver() {
  # An NVIDIA GPU (PCI vendor 0x10de) whose driver is still being installed at first
  # boot: wait, or the bootstrap would pick a CPU build of torch.
  grep -qs 0x10de /sys/bus/pci/devices/*/vendor || return 0
  local i
  for i in $(seq 1 60); do
    nvidia-smi >/dev/null 2>&1 && return 0
    log "waiting for the NVIDIA driver ($i/60)"
    sleep 10
  done
  log "nvidia-smi still fails; going on (the bootstrap reports what it finds)"
}

make_venv() {
  # One venv per wheel; an unchanged wheel reuses it on the next boot.
  VENV=/opt/synthdet-boot/venv-${WHEEL_SHA256:0:8}${REQUIREMENTS_SHA256:0:8}
  [ -f "$VENV/.ok" ] && return 0
  rm -rf "$VENV"
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    log "installing venv support for $PY"
    apt-get -o DPkg::Lock::Timeout=300 update -q &&
      apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends \
        "python3-venv" "$(basename "$PY")-venv" || true
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" || die "$PY cannot create a venv"
  fi
  local wheel=$FILES/$(basename "$WHEEL_OBJECT") requirements=$FILES/boot-requirements.txt
  fetch_verified "$WHEEL_OBJECT" "$WHEEL_SHA256" "$wheel"
  fetch_verified "$REQUIREMENTS_OBJECT" "$REQUIREMENTS_SHA256" "$requirements"
  log "installing the bootstrap into $VENV (locked packages, hash-checked)"
  "$VENV/bin/python" -m pip install -q "${PIP_ARGS[@]}" --require-hashes -r "$requirements"
  "$VENV/bin/python" -m pip install -q --no-deps "$wheel"
  touch "$VENV/.ok"
  # Older venvs (an earlier wheel) are not needed any more.
  for old in /opt/synthdet-boot/venv-*; do [ "$old" = "$VENV" ] || rm -rf "$old"; done
}

# ---------------------------------------------------------------- main
log "starting (source $SOURCE)"
wait_for_gpu_driver
make_venv
# A later boot without the bucket (gone, unreachable) keeps serving what it has: every
# file it needs is cached and checked, and the deployed service is enabled anyway.
# boot.json holds the URL secret: written 0600 from its first byte (umask 077 in a subshell).
if (umask 077 && fetch "$CONFIG_OBJECT" "$FILES/boot.json.new"); then
  chmod 600 "$FILES/boot.json.new"
  mv -f "$FILES/boot.json.new" "$FILES/boot.json"
elif [ -f "$FILES/boot.json" ]; then
  log "cannot fetch $CONFIG_OBJECT: using the config of the last boot"
else
  die "cannot fetch $CONFIG_OBJECT from $SOURCE"
fi
while read -r object sha; do
  [ -n "$object" ] || continue
  fetch_verified "$object" "$sha" "$FILES/$(basename "$object")"
done <<< "$ARCHIVES"

for attempt in $(seq 1 "$ATTEMPTS"); do
  if "$VENV/bin/python" -m bootstrap.boot_local --config "$FILES/boot.json" --archive-dir "$FILES"; then
    date -u +%FT%TZ > "$STATE/serving-since"
    log "done: serving"
    exit 0
  fi
  log "bootstrap attempt $attempt of $ATTEMPTS failed"
  sleep 20
done
die "the bootstrap did not succeed; the load balancer's health check keeps this instance out"
