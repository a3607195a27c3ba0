#!/usr/bin/env bash
# The VS Code extension's tests: unit tests (mocha, no VS Code), packaging (.vsix with vsce), and
# the end-to-end run in a real VS Code (code-server + Chromium on the simulated cluster, driven
# by tests/tests/vscode.rs and e2e/run.mjs).
#
# Installs what it needs when missing: npm packages (npm ci), Debian's chromium, libkrb5-dev and
# ripgrep (apt), code-server into a cache outside the repo ($MIRRORD_E2E_CACHE, default
# ~/.cache/mirrord-vscode-e2e). Screenshots and logs of the e2e go to target/vscode-e2e/.
#
# Usage: scripts/test-all.sh [--no-e2e]
# Ends with one line "vscode-extension: N passed, M failed" (unit tests + packaging + e2e steps).
set -uo pipefail

EXT="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="$(cd "$EXT/.." && pwd)"
CS_VERSION=4.100.3
CACHE="${MIRRORD_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mirrord-vscode-e2e}"
CS_DIR="$CACHE/code-server-$CS_VERSION"
CS_BIN="$CS_DIR/node_modules/.bin/code-server"
VSIX="$EXT/mirrord-vscode.vsix"
SHOTS="$ROOT/target/vscode-e2e"
RUN_E2E=1
[ "${1:-}" = "--no-e2e" ] && RUN_E2E=0

passed=0
failed=0
summary=()
now() { date +%s; }
note() { echo "== $*" >&2; }
record() { # name ok|fail seconds
  summary+=("$(printf '%-10s %-4s %4ss' "$1" "$2" "$3")")
}
finish() {
  echo
  echo "phase      result time"
  for s in "${summary[@]}"; do echo "$s"; done
  echo "vscode-extension: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit $?
}

have() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "${APT_UPDATED:-}" ]; then
    apt-get update -qq >/dev/null && APT_UPDATED=1
  fi
  apt-get install -y -qq "$@" >/dev/null
}

# ---------------------------------------------------------------- npm ci
cd "$EXT" || exit 1
t=$(now)
note "npm ci"
if ! timeout 600 npm ci --no-audit --no-fund --loglevel=error; then
  failed=$((failed + 1)); record "npm ci" fail $(($(now) - t)); finish
fi
record "npm ci" ok $(($(now) - t))

# ---------------------------------------------------------------- unit tests
t=$(now)
note "unit tests (npm test)"
unit_log=$(mktemp)
timeout 300 npm test 2>&1 | tee "$unit_log"
unit_rc=${PIPESTATUS[0]}
up=$(sed -n 's/^ *\([0-9]\+\) passing.*/\1/p' "$unit_log" | tail -1)
uf=$(sed -n 's/^ *\([0-9]\+\) failing.*/\1/p' "$unit_log" | tail -1)
rm -f "$unit_log"
passed=$((passed + ${up:-0}))
failed=$((failed + ${uf:-0}))
if [ "$unit_rc" -ne 0 ] && [ "${uf:-0}" -eq 0 ]; then failed=$((failed + 1)); fi
record unit "$([ "$unit_rc" -eq 0 ] && echo ok || echo fail)" $(($(now) - t))

# ---------------------------------------------------------------- package
t=$(now)
note "package (vsce $(node -p 'require("@vscode/vsce/package.json").version' 2>/dev/null))"
rm -f "$VSIX"
# unzip checks the package's contents (Debian's base image may not have it).
have unzip || apt_install unzip
# (The listing goes through a variable: `unzip | grep -q` under pipefail fails whenever grep
# exits before unzip has written everything.)
if timeout 300 npm run -s package && [ -s "$VSIX" ] \
  && listing=$(unzip -l "$VSIX") && grep -q 'extension/out/src/extension.js' <<<"$listing"; then
  passed=$((passed + 1)); record package ok $(($(now) - t))
  echo "packaged: $VSIX ($(du -h "$VSIX" | cut -f1))"
else
  failed=$((failed + 1)); record package fail $(($(now) - t)); finish
fi

[ "$RUN_E2E" -eq 1 ] || finish

# ---------------------------------------------------------------- e2e prerequisites
t=$(now)
note "e2e prerequisites"
pkgs=()
[ -x /usr/bin/chromium ] || pkgs+=(chromium)
[ -x /usr/bin/rg ] || pkgs+=(ripgrep)
[ -e /usr/include/krb5.h ] || [ -e /usr/include/krb5/krb5.h ] || pkgs+=(libkrb5-dev)
have unzip || pkgs+=(unzip)
if [ ${#pkgs[@]} -gt 0 ]; then
  note "apt-get install ${pkgs[*]}"
  apt_install "${pkgs[@]}" || { failed=$((failed + 1)); record e2e-prep fail $(($(now) - t)); finish; }
fi
# The cluster's own system packages (iproute2, iptables, dnsmasq, curl, ...).
(cd "$ROOT" && . scripts/deps.sh) || { failed=$((failed + 1)); record e2e-prep fail $(($(now) - t)); finish; }

if ! "$CS_BIN" --version >/dev/null 2>&1; then
  note "installing code-server $CS_VERSION into $CS_DIR"
  # @vscode/ripgrep's postinstall downloads rg from outside the registries; seed its cache with
  # Debian's rg (a tarball with `rg` at its root, the name it looks for).
  tmp="${TMPDIR:-/tmp}"
  rgcache="$tmp/vscode-ripgrep-cache-1.15.11"
  mkdir -p "$rgcache"
  rgtar="$rgcache/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz"
  if [ ! -s "$rgtar" ]; then
    d=$(mktemp -d) && cp /usr/bin/rg "$d/rg" && tar czf "$rgtar" -C "$d" rg && rm -rf "$d"
  fi
  rm -rf "$CS_DIR" && mkdir -p "$CS_DIR"
  echo '{"name":"mirrord-e2e-code-server","private":true}' >"$CS_DIR/package.json"
  if ! (cd "$CS_DIR" && npm_config_yes=true timeout 900 npm install "code-server@$CS_VERSION" \
    --unsafe-perm --no-audit --no-fund --loglevel=error) || ! "$CS_BIN" --version >/dev/null 2>&1; then
    failed=$((failed + 1)); record e2e-prep fail $(($(now) - t)); finish
  fi
fi
echo "code-server: $("$CS_BIN" --version 2>/dev/null | head -1)"

note "cargo build --workspace"
if ! (cd "$ROOT" && timeout 1200 cargo build --workspace --quiet); then
  failed=$((failed + 1)); record e2e-prep fail $(($(now) - t)); finish
fi
record e2e-prep ok $(($(now) - t))

# ---------------------------------------------------------------- e2e
t=$(now)
note "e2e: code-server + Chromium on the simulated cluster"
rm -rf "$SHOTS" && mkdir -p "$SHOTS"
e2e_log="$SHOTS/e2e.log"
(cd "$ROOT" && MIRRORD_E2E_CODE_SERVER="$CS_BIN" MIRRORD_E2E_VSIX="$VSIX" MIRRORD_E2E_SCREENSHOTS="$SHOTS" \
  timeout 900 cargo test -p mirrord-tests --test vscode -- --ignored --nocapture) 2>&1 | tee "$e2e_log"
e2e_rc=${PIPESTATUS[0]}
if [ -s "$SHOTS/results.json" ]; then
  ep=$(node -p "require('$SHOTS/results.json').filter(r => r.ok).length")
  ef=$(node -p "require('$SHOTS/results.json').filter(r => !r.ok).length")
else
  ep=0; ef=0
fi
passed=$((passed + ep))
failed=$((failed + ef))
if [ "$e2e_rc" -ne 0 ] && [ "$ef" -eq 0 ]; then failed=$((failed + 1)); fi
record e2e "$([ "$e2e_rc" -eq 0 ] && echo ok || echo fail)" $(($(now) - t))
for f in "$SHOTS"/*.png; do [ -e "$f" ] && echo "screenshot: $f"; done
finish
