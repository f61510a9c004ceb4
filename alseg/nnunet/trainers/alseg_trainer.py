"""alseg's one configurable nnU-Net trainer (found through ``nnUNet_extTrainer``).

nnU-Net sets epochs, iterations and the learning rate as trainer attributes, so stock usage needs a
subclass per value. This trainer reads them from ``ALSEG_NNUNET_SCHEDULE`` (JSON: ``epochs``,
``iterations_per_epoch``, ``val_iterations_per_epoch``, ``learning_rate``, ``batch_size``,
``final_validation``, ``snapshot_every``), which alseg sets in the training subprocess's own environment.

``snapshot_every`` (epochs, 0: none) keeps a copy of the weights every that many epochs as
``checkpoint_ep<N>.pth`` beside nnU-Net's own checkpoints, so a learning curve can be measured
from one training run.
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
        self.alseg_snapshot_every = int(schedule.get("snapshot_every", 0))
        self.alseg_batch_size = int(schedule.get("batch_size") or 0)

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        if self.alseg_batch_size:  # the schedule's batch instead of the plan's (one process: no DDP split)
            if self.is_ddp:
                raise RuntimeError("a schedule batch_size is for single-process training; leave it unset under DDP")
            self.batch_size = self.alseg_batch_size

    def on_epoch_end(self):
        epoch = self.current_epoch + 1  # epochs finished once this one ends
        super().on_epoch_end()
        if self.alseg_snapshot_every and epoch % self.alseg_snapshot_every == 0:
            self.save_checkpoint(os.path.join(self.output_folder, f"checkpoint_ep{epoch}.pth"))

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.alseg_final_validation:
            return super().perform_actual_validation(save_probabilities)
        self.print_to_log_file("final validation skipped (alseg schedule)")
        return None
