#!/usr/bin/env bash
# Wall time of `make quickstart` as a new user meets it: a fresh clone of this checkout's HEAD, an empty
# activation/model cache and no pip cache, set-up included. The set-up (`make setup`) and the recipe
# (`irlm run recipes/quickstart.yaml --check`, what `make quickstart` runs, plus the check of its
# `expected:` numbers) are timed apart. Prints one JSON line: seconds in all, set-up seconds, each stage's
# seconds, the CPU model, the precision `auto` chose, the check's verdict and the report's rows. The
# clone lives in a temporary folder this script makes and removes.
#   bash bench/quickstart.sh            # IRLM_DATA: the datasets (default ../shared/data)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
data="${IRLM_DATA:-$(cd "$repo/../shared/data" && pwd)}"
work="$(mktemp -d -t irlm-quickstart-XXXXXX)"
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/irlm"
cd "$work/irlm"
export IRLM_DATA="$data" IRLM_CACHE="$work/cache" PIP_NO_CACHE_DIR=1
start=$(date +%s)
rc=0
make setup > "$work/log" 2>&1 || rc=$?
setup=$(( $(date +%s) - start ))
if [ "$rc" -eq 0 ]; then
  make -s quickstart QUICKSTART_FLAGS=--check >> "$work/log" 2>&1 || rc=$?
fi
seconds=$(( $(date +%s) - start ))
cpu="$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
python3 - "$seconds" "$setup" "$rc" "$cpu" "$work/cache/precision.json" "$work/log" <<'PY'
import json, pathlib, sys
seconds, setup, rc, cpu, precision_file, log = sys.argv[1:]
state_file = pathlib.Path("runs/quickstart/state.json")  # absent when the run failed early
state = json.loads(state_file.read_text()) if state_file.is_file() else {}
report = pathlib.Path("runs/quickstart/report/report.json")
rows = json.loads(report.read_text())["rows"] if report.is_file() else []
chosen = pathlib.Path(precision_file)
precision = sorted({v["precision"] for v in json.loads(chosen.read_text()).values()}) if chosen.is_file() else []
checks = [ln.split()[0] for ln in pathlib.Path(log).read_text().splitlines() if ln.startswith(("PASS ", "FAIL "))]
print(json.dumps({"bench": "quickstart", "seconds": int(seconds), "setup_s": int(setup), "rc": int(rc), "cpu": cpu,
                  "precision": precision, "stages_s": {k: v.get("seconds") for k, v in state.items()},
                  "check": {"pass": checks.count("PASS"), "fail": checks.count("FAIL")},
                  "ndcg@10": {r["system"] + " " + r["data"]: r.get("ndcg@10") for r in rows}}))
PY
[ "$rc" -eq 0 ] || tail -20 "$work/log" >&2
exit "$rc"
