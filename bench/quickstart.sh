#!/usr/bin/env bash
# Wall time of `make quickstart` as a new user meets it: a fresh clone of this checkout's HEAD, an empty
# activation/model cache and no pip cache, set-up included. Prints one JSON line (seconds, exit status,
# the report's rows); the clone lives in a temporary folder this script makes and removes.
#   bash bench/quickstart.sh            # IRLM_DATA: the datasets (default ../shared/data)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
data="${IRLM_DATA:-$(cd "$repo/../shared/data" && pwd)}"
work="$(mktemp -d -t irlm-quickstart-XXXXXX)"
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/irlm"
cd "$work/irlm"
start=$(date +%s)
rc=0
IRLM_DATA="$data" IRLM_CACHE="$work/cache" PIP_NO_CACHE_DIR=1 make quickstart > "$work/log" 2>&1 || rc=$?
seconds=$(( $(date +%s) - start ))
python3 -c 'import json, pathlib, sys
report = pathlib.Path("runs/quickstart/report/report.json")  # absent when the run failed early
rows = json.loads(report.read_text())["rows"] if report.is_file() else []
print(json.dumps({"bench": "quickstart", "seconds": int(sys.argv[1]), "rc": int(sys.argv[2]),
                  "ndcg@10": {r["system"] + " " + r["data"]: r.get("ndcg@10") for r in rows}}))' "$seconds" "$rc"
[ "$rc" -eq 0 ] || tail -20 "$work/log" >&2
exit "$rc"
