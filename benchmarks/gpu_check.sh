#!/usr/bin/env bash
# GPU check for issue 4 (clusters and heterogeneous resources), in one prepared run.
#
# On the lent GPU machine (Python 3.12, no dask/xgboost there; see ../shared/gpu/README.md):
#   1. installs the wheels carried in .whl/ (xgboost-cu13 3.3.0 and the pure-Python rest:
#      dask, distributed, dask-awkward, awkward, awkward-cpp, uproot, cramjam, xxhash, ...)
#      into /tmp/site, and runs the package from this source tree (PYTHONPATH);
#   2. runs the GPU tests (tests/test_gpu.py: xgboost.dask with device=cuda on a GPU-tagged
#      worker of a local-gpu cluster);
#   3. generates a sample of >= 2M events and runs 'mlaas bench' on local:2 (2 CPU workers)
#      and local-gpu (CPU workers read, one GPU worker trains);
#   4. trains the same MLP (3 x 128, issue 12) with device: cuda on local-gpu vs
#      data-parallel on 2 CPU worker processes (model.workers: 2, gloo), through
#      benchmarks/bench_nn_parallel.py --compare-gpu on the same sample;
#   5. writes everything under $OUT (bench.md/json/png, nn.json, logs, nvidia-smi,
#      summary.json) and checks the targets: XGBoost GPU training >= 8x faster than 2 CPU
#      workers, the network's GPU epoch rate >= 5x that of 2 CPU workers, AUCs within 0.005.
#
# CPU path (here, CI, laptops):  benchmarks/gpu_check.sh --cpu [--events 20000]
#   same steps with a small sample and clusters local:1,local:2,local-gpu; the GPU tests
#   skip and local-gpu gets a 'failed' row (no GPU), and the network's cuda run fails with
#   its message while the 2 CPU workers train it: what the CPU path expects.
#
# Wheels for the GPU machine (prepare here; see the device tool's README for the platform
# flags): pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl
#   xgboost-cu13==3.3.0 dask==2025.3.0 distributed==2025.3.0 dask-awkward==2026.2.1
#   awkward awkward-cpp uproot==5.7.* cramjam xxhash tornado tblib zict locket partd
#   sortedcontainers click packaging
# and for the network (torch is there already): onnx onnxruntime onnxscript onnx_ir
#   ml_dtypes safetensors (the network path imports xgboost too, via mlaas_dask.train.xgb)
# xgboost-cu13 alone is 59 MB of the 64 MiB a call carries: carry it in a first call that
# installs it into /tmp/site (pip install --target /tmp/site), the rest in a second call,
# back to back while the machine is warm, then run this script in that second call.
#
# Options: --cpu | --gpu (default: --gpu when nvidia-smi lists a GPU), --events N,
#          --rounds N (boosting rounds, default 100), --epochs N (network epochs, default
#          3), --nn-events N (events of the network comparison, default: --events),
#          --out DIR (default: $OUT, else benchmarks/results/gpu_check)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

MODE=""
EVENTS=""
ROUNDS=100
EPOCHS=3
NN_EVENTS=""
DEST="${OUT:-$ROOT/benchmarks/results/gpu_check}"
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) MODE=cpu ;;
        --gpu) MODE=gpu ;;
        --events) EVENTS="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --epochs) EPOCHS="$2"; shift ;;
        --nn-events) NN_EVENTS="$2"; shift ;;
        --out) DEST="$2"; shift ;;
        *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$MODE" ]; then
    if command -v nvidia-smi > /dev/null && nvidia-smi -L 2> /dev/null | grep -q '^GPU '; then
        MODE=gpu
    else
        MODE=cpu
    fi
fi
if [ "$MODE" = gpu ]; then
    EVENTS="${EVENTS:-2000000}"
    CLUSTERS="local:2,local-gpu"
else
    EVENTS="${EVENTS:-20000}"
    CLUSTERS="local:1,local:2,local-gpu"
fi
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
echo "gpu_check: mode $MODE, $EVENTS events, clusters $CLUSTERS, figures in $DEST"

# Python: this repo's venv when there is one (CPU path), else python3 + carried wheels
if [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY="$(command -v python3)"
    [ -d /tmp/site ] && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    if ! "$PY" -c "import dask, distributed, xgboost, uproot, dask_awkward, onnx, onnxruntime, safetensors" 2> /dev/null; then
        if ! ls "$ROOT"/.whl/*.whl > /dev/null 2>&1; then
            echo "gpu_check: no dask/xgboost here and no wheels in .whl/ (carry them)" >&2
            exit 2
        fi
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$ROOT"/.whl/*.whl || exit 2
        case ":${PYTHONPATH:-}:" in *:/tmp/site:*) ;; *) export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" ;; esac
    fi
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
MLAAS=("$PY" -m mlaas_dask)

{ nvidia-smi || echo "no nvidia-smi"; } > "$DEST/nvidia-smi.txt" 2>&1
"$PY" - > "$DEST/versions.txt" 2>&1 <<'PY'
import platform, importlib.metadata as m
print("python", platform.python_version())
for p in ("xgboost", "xgboost-cu13", "dask", "distributed", "dask-awkward", "uproot",
          "torch", "onnx", "onnxruntime", "safetensors"):
    try:
        print(p, m.version(p))
    except m.PackageNotFoundError:
        pass
PY

# 1. GPU tests (skip without a GPU)
"$PY" -m pytest -q -p no:cacheprovider -p no:logging tests/test_gpu.py > "$DEST/gpu_tests.log" 2>&1
TESTS_RC=$?
tail -3 "$DEST/gpu_tests.log"

# 2. sample + job
DATA="${MLAAS_GPU_CHECK_DATA:-/tmp/mlaas-gpu-check-$EVENTS}"
if [ ! -f "$DATA/.complete" ]; then
    "${MLAAS[@]}" sample --out "$DATA" --events "$EVENTS" --compression zlib:1 \
        --files-per-class 4 --overwrite > /dev/null || exit 2
    touch "$DATA/.complete"
fi
cat > "$DEST/job.yaml" <<YAML
# generated by benchmarks/gpu_check.sh: $EVENTS events, same settings on every cluster
dataset:
  step_size: 125000
  groups:
    - {name: signal, files: ["$DATA/signal*.root"], label: 1}
    - {name: background, files: ["$DATA/background*.root"], label: 0}
features:
  flat: [MET_pt, MET_phi, PV_npvs]
  collections:
    Jet: {fields: [pt, eta, phi, mass, btagDeepB], n: 6, sort_by: pt}
    Muon: {fields: [pt, eta, charge], n: 2, sort_by: pt}
    Electron: {fields: [pt, eta, charge], n: 2, sort_by: pt}
model:
  device: auto                # cuda on local-gpu, cpu on local:N
  params: {max_depth: 6, eta: 0.1}
  num_boost_round: $ROUNDS
  early_stopping_rounds: 0    # a fixed number of rounds: the same work on every cluster
split: {train: 0.7, validation: 0.15, test: 0.15, seed: 42}
YAML

# 3. bench
"${MLAAS[@]}" bench "$DEST/job.yaml" --clusters "$CLUSTERS" --out "$DEST" \
    > "$DEST/bench.log" 2>&1
BENCH_RC=$?
cat "$DEST/bench.md" 2> /dev/null || tail -20 "$DEST/bench.log"

# 4. the network: device cuda on local-gpu vs model.workers: 2 on 2 CPU worker processes
"$PY" benchmarks/bench_nn_parallel.py --compare-gpu --data "$DATA" \
    --events "${NN_EVENTS:-$EVENTS}" --hidden 128 --epochs "$EPOCHS" --batch-size 1024 \
    --out "$DEST/nn.json" > "$DEST/nn.log" 2>&1
NN_RC=$?
cat "$DEST/nn.json" 2> /dev/null || tail -20 "$DEST/nn.log"

# 5. targets
"$PY" - "$DEST" "$MODE" "$TESTS_RC" "$BENCH_RC" "$NN_RC" <<'PY'
import json, sys
from pathlib import Path
dest, mode = Path(sys.argv[1]), sys.argv[2]
tests_rc, bench_rc, nn_rc = (int(v) for v in sys.argv[3:6])
rows = {}
if (dest / "bench.json").exists():
    rows = {r["cluster"]: r for r in json.loads((dest / "bench.json").read_text())["rows"]}
cpu, gpu = rows.get("local:2", {}), rows.get("local-gpu", {})
summary = {"mode": mode, "gpu_tests_rc": tests_rc, "bench_rc": bench_rc,
           "cpu2_train_s": cpu.get("train_s"), "gpu_train_s": gpu.get("train_s"),
           "cpu2_auc": cpu.get("auc"), "gpu_auc": gpu.get("auc"),
           "gpu_error": gpu.get("error")}
if cpu.get("train_s") and gpu.get("train_s"):
    summary["train_speedup"] = cpu["train_s"] / gpu["train_s"]
    summary["auc_difference"] = abs(cpu["auc"] - gpu["auc"])
    summary["targets_met"] = summary["train_speedup"] >= 8 and summary["auc_difference"] <= 0.005
nn = json.loads((dest / "nn.json").read_text()) if (dest / "nn.json").exists() else {}
summary["nn_rc"] = nn_rc
summary.update({f"nn_{k}": nn.get(k) for k in (
    "cpu2_epoch_events_per_s", "gpu_epoch_events_per_s", "gpu_speedup", "cpu2_auc",
    "gpu_auc", "auc_difference", "targets_met", "gpu_error")})
(dest / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
if mode == "gpu":
    ok = (tests_rc == 0 and bench_rc == 0 and summary.get("targets_met") and nn_rc == 0
          and nn.get("targets_met"))
else:  # CPU path: the GPU tests skip (pytest rc 0 or 5), local:2 works, local-gpu fails;
    # the network trains on 2 CPU workers and its cuda run fails with a message
    ok = (tests_rc in (0, 5) and bench_rc == 0 and cpu.get("auc") and gpu.get("error")
          and nn_rc == 0 and nn.get("cpu2_auc") and nn.get("gpu_error"))
sys.exit(0 if ok else 1)
PY
