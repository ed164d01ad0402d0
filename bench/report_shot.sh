#!/usr/bin/env bash
# What a person sees on opening a report: REPORT_DIR/report.html rendered by headless Chromium into a
# 1400x2000 PNG, with every host name unresolvable, so the page is proven to need no network (no CDN, no
# server). Installs Debian's `chromium` package when no Chromium is found. Prints one JSON line.
#   bash bench/report_shot.sh runs/quickstart/report docs/quickstart-report.png
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: bash bench/report_shot.sh REPORT_DIR OUT.png" >&2
  exit 2
fi
html="$(cd "$1" 2>/dev/null && pwd)/report.html" || true
if [ ! -f "$html" ]; then
  echo "error: $1 holds no report.html (irlm report RUN_DIR writes one)" >&2
  exit 2
fi
mkdir -p "$(dirname "$2")"
out="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [ -z "$browser" ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  browser="$(command -v chromium)"
fi
profile="$(mktemp -d -t irlm-shot-XXXXXX)"  # a throw-away profile: nothing of the user's browser is read
trap 'rm -rf "$profile"' EXIT
start=$(date +%s%N)
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --host-resolver-rules="MAP * ~NOTFOUND" \
  --hide-scrollbars --screenshot="$out" --window-size=1400,2000 "file://$html" > "$profile/log" 2>&1 || {
  tail -5 "$profile/log" >&2
  exit 1
}
[ -s "$out" ] || { echo "error: chromium wrote no $out" >&2; tail -5 "$profile/log" >&2; exit 1; }
ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "{\"bench\": \"report_shot\", \"png\": \"$out\", \"bytes\": $(wc -c < "$out"), \"ms\": $ms}"
