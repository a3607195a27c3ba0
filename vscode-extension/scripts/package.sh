#!/usr/bin/env bash
# Builds mirrord-vscode.vsix with vsce (pinned in package.json).
#   scripts/package.sh                 the extension alone (mirrord-server from the setting or PATH)
#   scripts/package.sh --bundle DIR    also ships DIR/{mirrord-server,mirrord-agent,libmirrord_layer.so}
#                                      in bin/ (e.g. DIR=../target/release), used when neither the
#                                      mirrord.serverPath setting nor PATH has mirrord-server
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f bin/mirrord-server bin/mirrord-agent bin/libmirrord_layer.so
if [ "${1:-}" = "--bundle" ]; then
  dir="${2:?--bundle needs the directory with the built binaries}"
  for f in mirrord-server mirrord-agent libmirrord_layer.so; do
    install -m 0755 "$dir/$f" "bin/$f"
    strip --strip-debug "bin/$f" 2>/dev/null || true
  done
fi
[ -d node_modules ] || npm ci --no-audit --no-fund
npm run -s package
echo "packaged: $(pwd)/mirrord-vscode.vsix"
