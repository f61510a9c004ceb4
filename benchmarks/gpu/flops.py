"""FLOPs of one forward pass of the default-plan network (nnU-Net's own builder), per patch and per voxel."""
import json, sys, torch
from torch.utils.flop_counter import FlopCounterMode
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

plans = json.load(open(sys.argv[1] + "/nnUNetPlans.json")); ds = json.load(open(sys.argv[1] + "/dataset.json"))
pm = PlansManager(plans); cm = pm.get_configuration("3d_fullres")
lm = pm.get_label_manager(ds)
net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import,
                             1, lm.num_segmentation_heads, allow_init=True, deep_supervision=False)
n_params = sum(p.numel() for p in net.parameters())
patch = cm.patch_size
with torch.device("meta"):
    net = net.to("meta")
    x = torch.empty(1, 1, *patch, device="meta")
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            net(x)
flops = fc.get_total_flops()
vox = 1
for p in patch: vox *= p
print(json.dumps({"patch": patch, "params": n_params, "flops_per_patch": flops, "flops_per_patch_voxel": flops / vox,
                  "classes": lm.num_segmentation_heads}))
