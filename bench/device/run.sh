#!/usr/bin/env bash
# The GPU evidence script (issue 16): one entry point for a bare GPU machine and for the CPU smoke mode.
#
#   bash bench/device/run.sh stage1              # device call 1: keep SmolLM2's GGUF part 1 under $IRLM_STAGE
#   bash bench/device/run.sh PACK OUTDIR [--rows x,y]   # device call 2+: stage (wheels, data, model), run PACK
#   bash bench/device/run.sh --smoke PACK|all OUTDIR    # CPU, tiny random models (tests/integration/test_device_smoke.py)
#   bash bench/device/run.sh next | plan         # the next pending pack (no committed results) | every pack's rows
#
# PACK is a..e (bench/device/packs/). Everything the pack measures lands in OUTDIR: PACK-DATE.json (rows,
# metrics, date, hardware, commit; rewritten after every row), PACK.log, setup.log, PACK-recipe.yaml and
# PACK-files.tar.gz (each row's small result files). The whole call, setup included, stays inside
# $IRLM_BOX seconds (default 480): the rows get what the setup left, each under its own cap, and `timeout`
# ends the process if it still runs. bench/device/prepare.py stages the carry and prints the exact calls.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
STAGE=${IRLM_STAGE:-$HOME/irlm-stage}
PY=${PYTHON:-python3}
BOX=${IRLM_BOX:-480}
T0=$(date +%s)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

case "${1:-}" in
  next | plan) exec "$PY" "$HERE/packs" "$1" ;;
  stage1)
    mkdir -p "$STAGE/parts" && cp "$HERE"/carry/call1/* "$STAGE/parts/" || { echo "STAGE: no carry/call1"; exit 3; }
    ls -l "$STAGE/parts"; df -h /root | tail -1; nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
    exit 0 ;;
  --smoke)
    [ $# -ge 3 ] || { echo "usage: run.sh --smoke PACK|all OUTDIR"; exit 2; }
    exec "$PY" "$HERE/packs" run "$2" "$3" --smoke "${@:4}" ;;
  a | b | c | d | e) ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
[ $# -ge 2 ] || { echo "usage: run.sh PACK OUTDIR [--rows x,y]"; exit 2; }
PACK=$1 OUT=$2
shift 2
mkdir -p "$OUT" "$STAGE"

setup() {  # idempotent: a later call of the same warm lease finds everything staged and skips it
  set -e
  echo "setup: $(date -u +%FT%TZ) on $(hostname)"; nvidia-smi || true
  if [ ! -f "$STAGE/site/.wheels" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STAGE/site" \
      "$HERE"/carry/call2/wheels/*.whl
    touch "$STAGE/site/.wheels"
  fi
  if [ ! -f "$STAGE/data/.done" ]; then
    mkdir -p "$STAGE/data" && tar -xzf "$HERE/carry/call2/data.tar.gz" -C "$STAGE/data" && touch "$STAGE/data/.done"
  fi
  if [ -f "$HERE/carry/call2/manifest.json" ]; then
    "$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); print(m['commit'])" \
      "$HERE/carry/call2/manifest.json" >"$STAGE/commit"
  fi
  if [ ! -f "$IRLM_CACHE/models/smollm2-135m/config.json" ]; then
    "$PY" "$HERE/stage.py" --stage "$STAGE" --carry "$HERE/carry"
  fi
  "$PY" -c "import torch, transformers, bm25s, pytrec_eval; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
        'transformers', transformers.__version__)"
}

export PYTHONPATH="$STAGE/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export IRLM_DATA="$STAGE/data" IRLM_CACHE="$STAGE/cache"
(setup) >"$OUT/setup.log" 2>&1
rc=$?
cat "$OUT/setup.log"
if [ $rc -ne 0 ]; then echo "setup failed ($rc): see setup.log"; exit $rc; fi
export IRLM_DEVICE_COMMIT=${IRLM_DEVICE_COMMIT:-$(cat "$STAGE/commit" 2>/dev/null || echo unknown)}

LEFT=$((BOX - ($(date +%s) - T0)))
echo "setup took $(($(date +%s) - T0)) s; pack $PACK gets $LEFT s"
[ "$LEFT" -gt 60 ] || { echo "no time left for pack $PACK after the setup (IRLM_BOX=$BOX)"; exit 4; }
timeout -k 15 "$LEFT" "$PY" "$HERE/packs" run "$PACK" "$OUT" --work "$STAGE/work/$PACK" \
  --budget $((LEFT - 30)) "$@" 2>&1 | tee "$OUT/$PACK.log"
rc=${PIPESTATUS[0]}
# each row's small files (results, stats, reports, augmentation examples); no weights, no runs
(cd "$STAGE/work" && find "$PACK" -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.yaml' \) \
  -size -8M -print0 | tar --null -czf "$OUT/$PACK-files.tar.gz" -T -) || true
echo "pack $PACK: exit $rc after $(($(date +%s) - T0)) s; files in $OUT:"; ls -l "$OUT"
exit $rc
