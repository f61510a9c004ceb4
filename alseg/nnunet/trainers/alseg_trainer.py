"""alseg's one configurable nnU-Net trainer (found through ``nnUNet_extTrainer``).

nnU-Net sets epochs, iterations and the learning rate as trainer attributes, so stock usage needs a
subclass per value. This trainer reads them from ``ALSEG_NNUNET_SCHEDULE`` (JSON: ``epochs``,
``iterations_per_epoch``, ``val_iterations_per_epoch``, ``learning_rate``, ``final_validation``),
which alseg sets in the training subprocess's own environment.
"""

import json
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerAlseg(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        schedule = json.loads(os.environ.get("ALSEG_NNUNET_SCHEDULE", "{}"))
        self.num_epochs = int(schedule.get("epochs", self.num_epochs))
        self.num_iterations_per_epoch = int(schedule.get("iterations_per_epoch", self.num_iterations_per_epoch))
        self.num_val_iterations_per_epoch = int(schedule.get("val_iterations_per_epoch", self.num_val_iterations_per_epoch))
        self.initial_lr = float(schedule.get("learning_rate", self.initial_lr))
        self.alseg_final_validation = bool(schedule.get("final_validation", True))
        self.save_every = max(1, min(self.save_every, self.num_epochs))

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.alseg_final_validation:
            return super().perform_actual_validation(save_probabilities)
        self.print_to_log_file("final validation skipped (alseg schedule)")
        return None
