"""Here (CPU): nnU-Net's default 3d_fullres plan (no alseg overrides) for MitoEM-like training
patches (32 x 512 x 512 at 30 x 8 x 8 nm, the patch shape of configs/mitoem-full.yaml), through
alseg's own export_dataset + plan_and_preprocess. Copies the plan files to .gpu/plan."""
import argparse, os, shutil, tempfile, json
from alseg.geometry import Box
from alseg.nnunet import IntensityNorm, NnUNetDirs, export_dataset, plan_and_preprocess
from alseg.synth import SynthParams, write_synthetic

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("dst", help="folder the plan files are copied to (benchmarks/gpu/run.sh passes .gpu/plan)")
dst = ap.parse_args().dst
tmp = tempfile.mkdtemp(prefix="plan-", dir="/tmp")
url = os.path.join(tmp, "v.zarr")
write_synthetic(url, SynthParams.preset("easy", shape=(32, 512, 1024), seed=1), chunks=(32, 256, 256))
dirs = NnUNetDirs(os.path.join(tmp, "nnunet"))
norm = IntensityNorm.of_volume(url)
boxes = [Box((0, 0, 0), (32, 512, 512)), Box((0, 0, 512), (32, 512, 1024))]
export_dataset(dirs, 1, "mitoemlike", url, url + "/labels/mitochondria", boxes, norm=norm)
plans = plan_and_preprocess(dirs, 1)
src = os.path.join(dirs.preprocessed, "Dataset001_mitoemlike")
os.makedirs(dst, exist_ok=True)
for f in ("nnUNetPlans.json", "dataset.json", "dataset_fingerprint.json"):
    shutil.copy(os.path.join(src, f), os.path.join(dst, f))
c = plans["configurations"]["3d_fullres"]
print(json.dumps({k: c[k] for k in ("patch_size", "batch_size", "spacing")}), json.dumps(c["architecture"]["arch_kwargs"]))
print("tmp", tmp)
