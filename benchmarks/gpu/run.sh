#!/bin/bash
# GPU figures for benchmarks/RESULTS.md, run on the device machine from the repo root:
#   bash benchmarks/gpu/run.sh        (carry: .gpu)
# Installs the missing packages (wheels in .gpu/whl; SimpleITK's wheel contents as .gpu/sitk.tar.xz,
# xz-compressed to fit the transfer limit) into /tmp/site, checks the imports, then runs
#   1. benchmarks/gpu/mae_gpu.py              MAE training step, configs/vnc.yaml settings
#   2. benchmarks/gpu/kcenter_gpu.py          alseg kcenter_greedy(device="cuda"), median of 3, coreset.py's default data
#   3. benchmarks/coreset.py --gpu   k-center benchmark as committed (defaults: n 1,000,000, d 256, k 1,000)
#   4. benchmarks/gpu/predict_gpu.py          nnU-Net default plan prediction, with and without mirroring
# each under its own time limit; logs and JSON go to $OUT.
# Before (on a CPU machine, in the repo root): .gpu/ (git-ignored) holds the wheels of what the
# device image lacks (the pip download recipe in /work/.library/device/README.md, versions from
# locks/cpu.txt; list in benchmarks/RESULTS.md) and the default plan made by
#   PYTHONPATH=. .venv/bin/python benchmarks/gpu/make_plan.py .gpu/plan
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
T0=$(date +%s)
el() { echo "[run.sh +$(( $(date +%s) - T0 ))s] $*"; }
{
el "install"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || { el "pip install failed"; exit 3; }
python3 -c "import tarfile; tarfile.open('.gpu/sitk.tar.xz').extractall('/tmp/site', filter='tar')" || { el "SimpleITK unpack failed"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD
export nnUNet_compile=f
el "installed"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
python3 -c "import sys, torch, timm, numpy, scipy, skimage, sklearn; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name(), 'timm', timm.__version__, 'numpy', numpy.__version__, 'scipy', scipy.__version__, 'skimage', skimage.__version__, 'sklearn', sklearn.__version__)"
lscpu | grep -E 'Model name|^CPU\(s\)'
python3 -c "
import alseg, alseg.select, alseg.embed, alseg.synth, alseg.io.omezarr, alseg.nnunet, alseg.nnunet.predict, alseg.spec
import zarr, ome_zarr, SimpleITK, blosc2, nibabel, cc3d, sklearn, tests.helpers.kcenter_reference
import nnunetv2.inference.predict_from_raw_data, nnunetv2.run.run_training, nnunetv2.experiment_planning.plan_and_preprocess_api
import nnunetv2.experiment_planning.plans_for_pretraining.move_plans_between_datasets, nnunetv2.inference.sliding_window_prediction
import dynamic_network_architectures, batchgeneratorsv2, acvl_utils
print('imports ok')
" || { el "imports failed"; exit 4; }
el "mae"
timeout -k 5 60 python3 benchmarks/gpu/mae_gpu.py --full-budget-s 25 --out "$OUT/mae.json" > "$OUT/mae.log" 2>&1; echo "mae rc $?"; grep '^\[' "$OUT/mae.log"
el "kcenter"
timeout -k 5 35 python3 benchmarks/gpu/kcenter_gpu.py --out "$OUT/kcenter.json" > "$OUT/kcenter.log" 2>&1; echo "kcenter rc $?"; tail -n 20 "$OUT/kcenter.log"
el "select"
timeout -k 5 100 python3 benchmarks/coreset.py --gpu > "$OUT/coreset.log" 2>&1; echo "coreset rc $?"; tail -n 40 "$OUT/coreset.log"
el "predict"
timeout -k 5 180 python3 benchmarks/gpu/predict_gpu.py --plan .gpu/plan --out "$OUT/predict.json" > "$OUT/predict.log" 2>&1; echo "predict rc $?"
grep -v '^ \|^{\|^}' "$OUT/predict.log" | tail -n 30
el "done"
} 2>&1 | tee "$OUT/run.log"
