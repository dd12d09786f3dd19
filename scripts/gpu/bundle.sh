#!/usr/bin/env bash
# `make gpu-bundle`: the wheels the GPU check installs offline (docs/gpu.md), into DEST (default gpu_bundle/,
# ignored by git): llava-torch (pure Python), bitsandbytes' manylinux wheel (QLoRA), and the project's small
# dependencies the GPU image lacks. No deepspeed: the check runs one process. Then manifest.json (the commit,
# the files, their sizes) and the size of what a call to the GPU machine carries (the working tree and DEST),
# refused over 60 MiB.
#   scripts/gpu/bundle.sh [DEST] [PYTHON_VERSION]   # PYTHON_VERSION: the GPU machine's, default 3.12
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEST=${1:-$REPO/gpu_bundle}
PYVER=${2:-3.12}
LIMIT_MIB=60
PY=${PYTHON:-python3}
mkdir -p "$DEST"
ABI=cp${PYVER/./}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform any)
# pinned where the project tests a version; the rest are leaves the GPU image may lack (check.sh installs only those)
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --abi "$ABI" --abi abi3 --abi none "${PLATFORMS[@]}" -d "$DEST" \
    llava-torch==1.2.2.post1 bitsandbytes==0.50.2 sentencepiece protobuf shortuuid einops requests urllib3 idna \
    certifi charset-normalizer pyyaml tqdm
commit=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo "")
dirty=$([ -n "$(git -C "$REPO" status --porcelain 2>/dev/null)" ] && echo true || echo false)
"$PY" - "$DEST" "$commit" "$dirty" "$PYVER" <<'PYEOF'
import json, pathlib, sys
dest, commit, dirty, python = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "true", sys.argv[4]
files = {p.name: p.stat().st_size for p in sorted(dest.glob("*.whl"))}
(dest / "manifest.json").write_text(json.dumps({"commit": commit or None, "dirty": dirty, "python": python,
                                                "wheels": files}, indent=1))
PYEOF
bundle=$(du -sb "$DEST" | cut -f1)
tree=$(git -C "$REPO" ls-files -z --cached --others --exclude-standard | (cd "$REPO" && xargs -0 du -cb 2>/dev/null) | awk '/total$/ {s+=$1} END {print s+0}')
total=$((bundle + tree))
printf 'gpu bundle: %s (%.1f MiB) + working tree %.1f MiB = %.1f MiB of the %d MiB limit\n' "$DEST" \
    "$(echo "$bundle / 1048576" | bc -l)" "$(echo "$tree / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)" "$LIMIT_MIB"
ls -1 "$DEST"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "gpu bundle: over $LIMIT_MIB MiB with the working tree; remove untracked files or trim the bundle" >&2
    exit 1
fi
