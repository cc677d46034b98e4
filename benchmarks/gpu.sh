#!/usr/bin/env bash
# The flow benchmark on one GPU, in one sitting: every configuration against nflows on CUDA
# with TensorFloat-32 products on both sides (XLA's default on such a GPU), then the ShapeNet and
# CelebA training and density rows again in true float32. Each run has a time limit and writes
# its table after every row, so a run that is cut off keeps what it measured.
#
#   bash benchmarks/gpu.sh OUT_DIR [SECONDS_TF32] [SECONDS_FLOAT32]
#
# Needs jax with CUDA, torch with CUDA and nflows 0.14 (`pip install -e ".[peers]"` beside a
# CUDA jax). Writes OUT_DIR/tf32/flows.{json,md}, OUT_DIR/float32/flows.{json,md} and
# OUT_DIR/gpu.txt (nvidia-smi and the versions).
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [SECONDS_TF32] [SECONDS_FLOAT32]}
cd "$(dirname "$0")/.."
mkdir -p "$out"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices()); print('torch', torch.__version__, torch.cuda.get_device_name())"
} >"$out/gpu.txt" 2>&1
export PYTHONUNBUFFERED=1
# The same flows' log-densities on the GPU (float32 products) and on the CPU must agree.
timeout 120 python3 - >>"$out/gpu.txt" 2>&1 <<'PY'
import sys

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, "benchmarks")
import flows as bench

jax.config.update("jax_default_matmul_precision", "float32")
for name, kind in [("mnist-ae", "maf"), ("shapenet", "rnvp"), ("celeba-maf", "maf")]:
    config = bench.CONFIGS[name]
    z, c = bench.data(config, 256, 0)
    values = {}
    for platform in ("cpu", "gpu"):
        with jax.default_device(jax.devices(platform)[0]):
            flow = bench.build_fpn(config, kind)
            # Away from the identity initialisation: every parameter moved by the same noise.
            rng = np.random.default_rng(1)
            params = nnx.state(flow, nnx.Param)
            nnx.update(flow, jax.tree.map(lambda p: p + 0.02 * rng.standard_normal(p.shape, np.float32), params))
            flow.eval()
            values[platform] = np.asarray(flow.log_prob(z, c))
    diff = np.abs(values["cpu"] - values["gpu"]).max()
    scale = np.abs(values["cpu"]).max()
    print(f"{name} {kind}: log_prob GPU vs CPU max |diff| {diff:.3g} (max |log_prob| {scale:.3g})")
PY
cat "$out/gpu.txt"
timeout "${2:-300}" python3 benchmarks/flows.py --device gpu --batch-scale 10 --vs nflows --precision tf32 \
    --repeats 3 --min-seconds 0.2 --out "$out/tf32"
echo "tf32 run: exit $?"
timeout "${3:-140}" python3 benchmarks/flows.py --device gpu --batch-scale 10 --vs nflows --precision float32 \
    --configs shapenet celeba-rnvp celeba-maf --metrics train log_prob --repeats 3 --min-seconds 0.2 \
    --out "$out/float32"
echo "float32 run: exit $?"
