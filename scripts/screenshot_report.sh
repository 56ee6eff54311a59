#!/usr/bin/env bash
# Render a report.html in Debian's headless Chromium and save a PNG screenshot next to it.
# usage: scripts/screenshot_report.sh demo/report.html [out.png]   (apt-get install chromium)
set -euo pipefail
html="$(realpath "$1")"
png="${2:-${html%.html}.png}"
browser="$(command -v chromium || command -v chromium-browser || true)"
[ -n "$browser" ] || { echo "chromium not found: apt-get install chromium" >&2; exit 2; }
tmp="$(mktemp -d)"
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$tmp" --hide-scrollbars \
  --window-size=1200,2400 --screenshot="$png" "file://$html" >/dev/null 2>&1
rm -rf "$tmp"
echo "$png"
