#!/usr/bin/env bash
# GPU numbers in one command (benchmarks/gpu.py): finishes within 8 minutes on one GPU and
# writes one JSON file under benchmarks/results/. Options go to gpu.py (--help lists them).
#
# Uses the project's .venv when there is one, else the machine's python3 (GPU images
# carry torch there). What the project needs besides torch is installed from the locked
# lists: from a folder of wheels when SYNTHDET_WHEELS names one (machines without a
# package index), else from the index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
"$PY" -c 'import torch, torchvision' 2>/dev/null || { echo "gpu.sh: $PY has no torch/torchvision" >&2; exit 1; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import ts, model_archiver, typer, httpx, aiohttp, tenacity, pydantic, yacs, qrcode' 2>/dev/null; then
  echo "gpu.sh: installing what the project needs besides torch ..." >&2
  source=()
  [ -n "${SYNTHDET_WHEELS:-}" ] && source=(--no-index --find-links "$SYNTHDET_WHEELS")
  "$PY" -m pip install -q "${source[@]}" -r bootstrap/requirements/service.txt --require-hashes
  "$PY" -m pip install -q "${source[@]}" typer rich httpx qrcode cryptography paramiko pydantic \
    pyyaml yacs psutil tenacity aiohttp
fi
exec "$PY" benchmarks/gpu.py "$@"
