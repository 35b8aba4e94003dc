#!/usr/bin/env bash
# GPU check of openjepa's training step against the official I-JEPA code: SDPA kernels, bf16-vs-fp32 parity,
# the step benchmark in bf16 for small224 (ViT-S/16) and huge224 (ViT-H/14) with peak memory, and torch.compile.
# Writes one JSON, gpu_check_<gpu>.json, into --out (default: $OUT when set, else benchmarks/results).
# Needs a CUDA GPU (fails with exit code 2 without one), torch, numpy and tqdm; no network, no torchvision.
#
#   benchmarks/gpu_check.sh --official PATH/TO/ijepa [--out DIR] [--warmup N] [--repeat N] [--skip-compile]
#
# Exit code: 0 all checks passed, 1 some check failed (the JSON says which and why), 2 unusable set-up.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python3}"
official=""
out="${OUT:-$root/benchmarks/results}"
extra=()

usage() { sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --official) [ $# -ge 2 ] || { echo "error: --official needs a path" >&2; exit 2; }; official="$2"; shift 2 ;;
        --official=*) official="${1#*=}"; shift ;;
        --out) [ $# -ge 2 ] || { echo "error: --out needs a folder" >&2; exit 2; }; out="$2"; shift 2 ;;
        --out=*) out="${1#*=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) extra+=("$1"); shift ;;
    esac
done

if [ -z "$official" ]; then
    echo "error: --official PATH/TO/ijepa is required (a checkout of facebookresearch/ijepa)" >&2; usage >&2; exit 2
fi
if [ ! -f "$official/src/models/vision_transformer.py" ]; then
    echo "error: $official is not a checkout of facebookresearch/ijepa (no src/models/vision_transformer.py)" >&2
    exit 2
fi
if ! "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "error: no CUDA GPU is visible to torch ($("$python" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>&1));" \
         "this check runs only on a CUDA machine" >&2
    exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true

export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's openjepa, installed or not
mkdir -p "$out"
exec "$python" "$here/gpu_check.py" --official "$(cd "$official" && pwd)" --out "$out" ${extra[@]+"${extra[@]}"}
