#!/usr/bin/env bash
# The GPU checks of issue 15's goal 3 in one call of the device tool (its README: one short,
# prepared script). The device machine has its own torch and triton and reaches nothing outside,
# so radfield runs from this checkout (PYTHONPATH), not installed: the package pins torch 2.13.0.
#
#   bash bench/gpu_check.sh          # writes gpu_check.log and demo_metrics.json to $OUT (or ./gpu_check_out)
#
# 1. tests/test_triton.py, test_volume_kernels.py and test_march_triton.py compiled on the GPU
#    (RADFIELD_TEST_DEVICE=cuda): the hash grid's Triton kernels against a brute-force evaluation,
#    the PyTorch reference's gradients and a hand-built scatter; volume rendering's against a
#    hand-computed ray, the PyTorch path and finite differences; the march's against the PyTorch
#    march; 2. bench/field_throughput.py on CUDA: Triton against the reference, radfield's ngp grid
#    and the paper's; 2b. bench/volume_throughput.py: volume rendering's kernels against the
#    PyTorch path; 3. `radfield demo` on the GPU: the built-in scene, 60 s of training, test PSNR.
#
# Goal 3's timing, NGP at 800 px and its time to 33 dB, is a second call of its own (about 7
# minutes: rendering the scene, 5 minutes of training, 200 test views):
#   OUT=... python3 bench/ngp_800.py       # writes ngp_800.json to $OUT
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-gpu_check_out}"
py="${PYTHON:-python3}"
mkdir -p "$out"
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $py -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name())"
    echo "== 1. Triton kernels compiled on the GPU (tests/test_*triton.py)"
    RADFIELD_TEST_DEVICE=cuda timeout 300 $py -m pytest -q -p no:cacheprovider tests/test_triton.py tests/test_volume_kernels.py tests/test_march_triton.py
    echo "== 2. field throughput on CUDA (radfield's ngp grid, then the paper's)"
    timeout 300 $py bench/field_throughput.py --device cuda --batch-log2 18 --tables ngp --iters 20
    timeout 300 $py bench/field_throughput.py --device cuda --batch-log2 18 --tables paper --iters 20
    echo "== 2b. volume rendering on CUDA: Triton against the PyTorch path"
    timeout 120 $py bench/volume_throughput.py --device cuda --rays 16384 --samples 32
    echo "== 3. radfield demo on the GPU (60 s of training)"
    timeout 420 $py -m radfield demo --device cuda --max-time 60 --out /tmp/radfield-gpu-demo
    cp /tmp/radfield-gpu-demo/run/metrics.json "$out/demo_metrics.json" 2>/dev/null
    date -u
} 2>&1 | tee "$out/gpu_check.log"
