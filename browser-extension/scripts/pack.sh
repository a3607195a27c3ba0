#!/usr/bin/env bash
# Packs the extension into a zip that Chromium loads once unpacked ("Load unpacked") and that
# the Chrome Web Store accepts as an upload: manifest.json at the root, the pages, styles and
# src/ -- nothing else (no tests, no node_modules). Entries are sorted and dated 1980-01-01 so
# the same sources give the same bytes.
#
# Usage: scripts/pack.sh [OUT.zip]   (default: browser-extension/mirrord-browser.zip)
set -euo pipefail
EXT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$EXT/mirrord-browser.zip}"
/usr/bin/python3 - "$EXT" "$OUT" <<'PY'
import json, os, sys, zipfile
ext, out = sys.argv[1], sys.argv[2]
manifest = json.load(open(os.path.join(ext, "manifest.json")))
files = ["manifest.json", "options.html", "options.css"]
files += sorted("src/" + f for f in os.listdir(os.path.join(ext, "src")) if f.endswith(".js"))
# Every file the manifest names must be in the zip.
named = [manifest["background"]["service_worker"], manifest["action"]["default_popup"], manifest["options_ui"]["page"]]
missing = [f for f in named if f not in files]
if missing:
    sys.exit(f"pack: the manifest names files that are not packed: {missing}")
tmp = out + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
    for f in files:
        info = zipfile.ZipInfo(f, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        z.writestr(info, open(os.path.join(ext, f), "rb").read())
os.replace(tmp, out)
print(f"packed {len(files)} files into {out} (version {manifest['version']})")
PY
