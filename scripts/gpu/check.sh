#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md). Run from anywhere; the repository is this script's ../..
#
#   scripts/gpu/check.sh OUTDIR                 # on the GPU machine: install the bundle offline, patch llava, run every check
#   scripts/gpu/check.sh --cpu-smoke OUTDIR     # the same code at tiny sizes on a CPU (part of `make test`)
#
# Options: --no-install (the Python already has llava-torch, patched, and the project's dependencies),
#          --only CHECK[,CHECK...] (these checks and what they need, e.g. --only qlora,train/llava;
#          the names: `python -m llava_dpa.gpu_check run --help`),
#          --keep-workdir (leave the built models in the work folder),
#          --attn flash_attention_2 (where flash-attn is installed: the packed flash-attention path; name the checks
#          with --only, e.g. --only packing/llava,packing/qwen-vl,train/llava; forward's fp32 reference cannot run it).
# Environment: PYTHON (default python3), GPU_BUNDLE (default <repo>/gpu_bundle), GPU_CHECK_WORKDIR (where the
# run's own work folder is made; default ${TMPDIR:-/tmp}).
# Writes OUTDIR/gpu_check.json and OUTDIR/gpu_check.log (everything this script and the checks print).
# Exit status: 0 when every check passed, 1 when one did not or the JSON breaks its schema, 2 when the run could not start.
set -uo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
SMOKE=0 INSTALL=1 KEEP=0 OUTDIR="" ONLY="" ATTN=sdpa
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-smoke) SMOKE=1 ;;
        --no-install) INSTALL=0 ;;
        --keep-workdir) KEEP=1 ;;
        --only) [ $# -gt 1 ] || usage; ONLY=$2; shift ;;
        --attn) [ $# -gt 1 ] || usage; ATTN=$2; shift ;;
        -h|--help) usage ;;
        -*) echo "check.sh: unknown option $1" >&2; usage ;;
        *) [ -z "$OUTDIR" ] || usage; OUTDIR=$1 ;;
    esac
    shift
done
[ -n "$OUTDIR" ] || usage

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
BUNDLE=${GPU_BUNDLE:-$REPO/gpu_bundle}
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG=$OUTDIR/gpu_check.log
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE=$!
# at exit: close our ends of the pipe and wait for tee, so that the log has every line (the exit status's last)
finish() { if [ -n "${WORK:-}" ] && [ "$KEEP" != 1 ]; then rm -rf "$WORK"; fi; exec >&- 2>&-; wait "$TEE"; }
trap finish EXIT
# the models (~41 GB at the full size) go to a new folder, removed at the end, under GPU_CHECK_WORKDIR or TMPDIR
mkdir -p "${GPU_CHECK_WORKDIR:-${TMPDIR:-/tmp}}" || exit 2
WORK=$(mktemp -d "${GPU_CHECK_WORKDIR:-${TMPDIR:-/tmp}}/llava-dpa-gpu-check.XXXXXX") || exit 2
echo "[check.sh] $(date -u +%FT%TZ) repo $REPO, python $("$PY" -c 'import sys; print(sys.version.split()[0])'), work $WORK"

# progress bars would fill the log that comes back (at most 16 MiB a file)
export TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
OLD_PYTHONPATH=${PYTHONPATH:-}
export PYTHONPATH="$REPO${OLD_PYTHONPATH:+:$OLD_PYTHONPATH}"
if [ "$INSTALL" = 1 ]; then
    # Offline: the bundle's wheels (make gpu-bundle) into a folder of their own, for what this Python lacks.
    [ -d "$BUNDLE" ] || { echo "[check.sh] no bundle at $BUNDLE: run 'make gpu-bundle' on a development machine" >&2; exit 2; }
    SITE=$WORK/site
    mkdir -p "$SITE"
    export PYTHONPATH="$REPO:$SITE${OLD_PYTHONPATH:+:$OLD_PYTHONPATH}"
    WANT=()
    # import name : distribution (the project's dependencies the GPU image may lack, llava-torch, bitsandbytes,
    # and DeepSpeed with what it imports at run time; its wheel has no compiled ops: make gpu-bundle)
    for pair in llava:llava-torch bitsandbytes:bitsandbytes sentencepiece:sentencepiece google.protobuf:protobuf \
                shortuuid:shortuuid einops:einops requests:requests urllib3:urllib3 idna:idna certifi:certifi \
                charset_normalizer:charset-normalizer yaml:pyyaml tqdm:tqdm deepspeed:deepspeed hjson:hjson \
                msgpack:msgpack cpuinfo:py-cpuinfo psutil:psutil pydantic:pydantic pydantic_core:pydantic-core \
                annotated_types:annotated-types typing_inspection:typing-inspection \
                typing_extensions:typing-extensions; do
        "$PY" -c "import ${pair%%:*}" 2>/dev/null || WANT+=("${pair#*:}")
    done
    if [ ${#WANT[@]} -gt 0 ]; then
        echo "[check.sh] installing from $BUNDLE: ${WANT[*]}"
        if "$PY" -m pip --version >/dev/null 2>&1; then
            "$PY" -m pip install --no-index --no-deps --find-links "$BUNDLE" --target "$SITE" --quiet "${WANT[@]}" || exit 2
        else  # no pip: a wheel is a zip archive of what goes on the path
            "$PY" - "$BUNDLE" "$SITE" "${WANT[@]}" <<'PYEOF' || exit 2
import pathlib, re, sys, zipfile
bundle, site = pathlib.Path(sys.argv[1]), sys.argv[2]
for name in sys.argv[3:]:
    wheels = sorted(bundle.glob(re.sub(r"[-_.]+", "_", name) + "-*.whl"))
    if not wheels:
        sys.exit(f"no wheel of {name} in {bundle}")
    zipfile.ZipFile(wheels[-1]).extractall(site)
PYEOF
        fi
    fi
    "$PY" -m llava_dpa.cli patch-llava || exit 2
    # the report's environment.bundle_commit and bundle_dirty (the tree's own commit stays `commit`)
    [ -f "$BUNDLE/manifest.json" ] && export LLAVA_DPA_BUNDLE_MANIFEST=$BUNDLE/manifest.json
fi
"$PY" -m llava_dpa.cli patch-llava --check >/dev/null || { echo "[check.sh] llava is not patched" >&2; exit 2; }

ARGS=(run "$OUTDIR" --workdir "$WORK" --attn "$ATTN")
[ "$SMOKE" = 1 ] && ARGS+=(--size smoke --device cpu) || ARGS+=(--size full)
[ -n "$ONLY" ] && ARGS+=(--only ${ONLY//,/ })
"$PY" -m llava_dpa.gpu_check "${ARGS[@]}"
status=$?
echo "[check.sh] $(date -u +%FT%TZ) exit status $status; $OUTDIR/gpu_check.json, $OUTDIR/gpu_check.log"
exit $status
