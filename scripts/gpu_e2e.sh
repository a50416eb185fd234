#!/usr/bin/env bash
# The seed's real path on a lent GPU in one call: installs the wheels carried in .whl/ (grain, array_record,
# ml_collections, PyAV, ...; see the device README), then runs scripts/gpu_e2e.py with the given flags, e.g.
#   scripts/gpu_e2e.sh --work /root/e2e --mirror "$OUT" --result "$OUT/e2e.json"
#   scripts/gpu_e2e.sh --work /root/e2e --mode full --blocks 16 --stages data+make_pt,validate+convert,train1,...
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
exec python3 scripts/gpu_e2e.py "$@"
