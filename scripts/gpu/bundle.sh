#!/usr/bin/env bash
# `make gpu-bundle`: the wheels the GPU check installs offline (docs/gpu.md), into DEST (default gpu_bundle/,
# ignored by git): llava-torch (pure Python), bitsandbytes' manylinux wheel (QLoRA), DeepSpeed (the ZeRO-3 check)
# with its runtime dependencies, and the project's small dependencies the GPU image lacks. Then manifest.json
# (the commit, the files, their sizes) and the size of what a call to the GPU machine carries (the working tree
# and DEST), refused over 60 MiB.
#
# DeepSpeed publishes only a source distribution. It is built into a pure-Python wheel here, not on the GPU
# machine: with DS_BUILD_OPS=0 in pip's isolated build environment, which has no torch, so no CUDA or C++ op can
# be compiled into it (DeepSpeed compiles an op just in time if one is asked for; the check's ZeRO-3 run with
# torch's AdamW asks for none). Building it on the GPU machine would fail there without nvcc whatever
# DS_BUILD_OPS says: its setup.py probes every CUDA op's compatibility unguarded, and the probes call nvcc once
# torch sees a GPU (DS_IGNORE_CUDA_DETECTION=1 skips them).
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
TARGET=(--only-binary=:all: --python-version "$PYVER" --implementation cp --abi "$ABI" --abi abi3 --abi none
        "${PLATFORMS[@]}" -d "$DEST")
# pinned where the project tests a version; the rest are leaves the GPU image may lack (check.sh installs only those)
"$PY" -m pip download --quiet --no-deps "${TARGET[@]}" \
    llava-torch==1.2.2.post1 bitsandbytes==0.50.2 sentencepiece protobuf shortuuid einops requests urllib3 idna \
    certifi charset-normalizer pyyaml tqdm hjson msgpack py-cpuinfo psutil
# DeepSpeed's config models: pydantic with the pydantic-core it pins (and their leaves), resolved together
"$PY" -m pip download --quiet "${TARGET[@]}" pydantic
# DeepSpeed: the version the dev extra installs here (constraints.txt), built from its sdist without ops
DS_VERSION=$(sed -n 's/^deepspeed==//p' "$REPO/constraints.txt")
[ -n "$DS_VERSION" ] || { echo "gpu bundle: no deepspeed== pin in constraints.txt" >&2; exit 1; }
SDIST=$(mktemp -d)
trap 'rm -rf "$SDIST"' EXIT
"$PY" -m pip download --quiet --no-deps --no-binary=:all: "deepspeed==$DS_VERSION" -d "$SDIST"
rm -f "$DEST"/deepspeed-*.whl
# --no-cache-dir: a wheel pip cached from another build (other variables, a torch in its environment) is not reused
DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-cache-dir -w "$DEST" "$SDIST"/deepspeed-"$DS_VERSION".tar.gz
"$PY" - "$DEST" "$DS_VERSION" <<'PYEOF'
import ast, pathlib, sys, zipfile
dest, version = pathlib.Path(sys.argv[1]), sys.argv[2]
wheel = dest / f"deepspeed-{version}-py3-none-any.whl"
if not wheel.is_file():
    sys.exit(f"gpu bundle: the deepspeed build gave {sorted(p.name for p in dest.glob('deepspeed-*'))}, not {wheel.name}")
with zipfile.ZipFile(wheel) as z:
    compiled = [n for n in z.namelist() if n.endswith((".so", ".pyd"))]
    info = z.read("deepspeed/git_version_info_installed.py").decode()
ops = ast.literal_eval(info.split("installed_ops=", 1)[1].splitlines()[0])
if compiled or any(ops.values()):
    sys.exit(f"gpu bundle: {wheel.name} carries compiled ops ({compiled or [k for k, v in ops.items() if v]}); build it with DS_BUILD_OPS=0")
PYEOF
commit=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo "")
dirty=$([ -n "$(git -C "$REPO" status --porcelain 2>/dev/null)" ] && echo true || echo false)
"$PY" - "$DEST" "$commit" "$dirty" "$PYVER" <<'PYEOF'
import json, pathlib, sys
dest, commit, dirty, python = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "true", sys.argv[4]
files = {p.name: p.stat().st_size for p in sorted(dest.glob("*.whl"))}
built = {name: "built here from its sdist with DS_BUILD_OPS=0, without torch: no compiled ops"
         for name in files if name.startswith("deepspeed-")}
(dest / "manifest.json").write_text(json.dumps({"commit": commit or None, "dirty": dirty, "python": python,
                                                "wheels": files, "built": built}, indent=1))
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
