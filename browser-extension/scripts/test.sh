#!/usr/bin/env bash
# The browser extension's tests: unit tests (node's test runner), packing (the zip), and the
# end-to-end run in Chromium on the simulated cluster (tests/tests/browser.rs, which packs the
# zip itself and loads its unpacked contents; needs root).
#
# Installs what it needs when missing: Debian's chromium (apt), the npm packages (npm ci from
# the committed package-lock.json: playwright-core, used by the e2e driver only).
#
# Usage: scripts/test.sh [--no-e2e]
# Ends with one line "browser-extension: N passed, M failed" (phases).
set -uo pipefail

EXT="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="$(cd "$EXT/.." && pwd)"
RUN_E2E=1
[ "${1:-}" = "--no-e2e" ] && RUN_E2E=0

passed=0
failed=0
summary=()
now() { date +%s; }
note() { echo "== $*" >&2; }
phase() { # name ok|fail started
  summary+=("$(printf '%-8s %-4s %4ss' "$1" "$2" "$(($(now) - $3))")")
  if [ "$2" = ok ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}
finish() {
  echo
  echo "phase    result time"
  for s in "${summary[@]}"; do echo "$s"; done
  echo "browser-extension: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit $?
}
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq "$@" >/dev/null
}

cd "$EXT" || exit 1

t=$(now)
note "npm ci"
if timeout 600 npm ci --no-audit --no-fund --loglevel=error; then phase "npm ci" ok "$t"; else phase "npm ci" fail "$t"; finish; fi

t=$(now)
note "unit tests"
if timeout 120 npm test; then phase unit ok "$t"; else phase unit fail "$t"; fi

t=$(now)
note "pack"
zip="$EXT/mirrord-browser.zip"
if scripts/pack.sh "$zip" && /usr/bin/python3 -c 'import sys, zipfile, json; json.load(zipfile.ZipFile(sys.argv[1]).open("manifest.json"))' "$zip"; then
  phase pack ok "$t"
else
  phase pack fail "$t"
fi

[ "$RUN_E2E" -eq 1 ] || finish

t=$(now)
note "e2e: Chromium with the extension on the simulated cluster"
if [ ! -x /usr/bin/chromium ]; then
  note "apt-get install chromium"
  apt_install chromium || { phase e2e fail "$t"; finish; }
fi
(cd "$ROOT" && . scripts/deps.sh) || { phase e2e fail "$t"; finish; }
if (cd "$ROOT" && timeout 1200 cargo build --quiet -p mirrord-server -p mirrord-agent -p mirrord-layer -p mirrord-tests \
  && timeout 600 cargo test -p mirrord-tests --test browser -- --ignored --test-threads=1); then
  phase e2e ok "$t"
else
  phase e2e fail "$t"
fi
finish
