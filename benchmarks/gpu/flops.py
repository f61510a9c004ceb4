"""FLOPs of one forward pass of the default-plan network (nnU-Net's own builder), per patch and per voxel.

    PYTHONPATH=. .venv/bin/python benchmarks/gpu/flops.py .gpu/plan
"""

import argparse
import json
import math


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plan", help="folder with nnUNetPlans.json and dataset.json (benchmarks/gpu/make_plan.py)")
    args = ap.parse_args()

    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from torch.utils.flop_counter import FlopCounterMode

    with open(f"{args.plan}/nnUNetPlans.json") as fh:
        plans = json.load(fh)
    with open(f"{args.plan}/dataset.json") as fh:
        dataset = json.load(fh)
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    lm = pm.get_label_manager(dataset)
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import,
                                 1, lm.num_segmentation_heads, allow_init=True, deep_supervision=False)
    n_params = sum(p.numel() for p in net.parameters())
    patch = cm.patch_size
    net = net.to("meta")
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net(torch.empty(1, 1, *patch, device="meta"))
    flops = fc.get_total_flops()
    print(json.dumps({"patch": patch, "params": n_params, "flops_per_patch": flops,
                      "flops_per_patch_voxel": flops / math.prod(patch), "classes": lm.num_segmentation_heads}))


if __name__ == "__main__":
    main()
