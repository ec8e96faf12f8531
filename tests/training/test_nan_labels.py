"""A training set whose image labels hold NaN stops the run at once, naming them (not ``total: nan``)."""

from __future__ import annotations

import pytest
from torch.utils.data import Dataset
from training_helpers import datasets, settings, tiny_net, write_root

from mcc.training import train


class _NaNLabels(Dataset):
    def __init__(self, base):
        self.base = base
        self.crop_size, self.seed = base.crop_size, base.seed
        self.mean, self.std = base.mean, base.std

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        sample = dict(self.base[index])
        sample["cls_label"] = sample["cls_label"].clone()
        sample["cls_label"][0] = float("nan")
        return sample


def test_nan_image_labels_are_refused(tmp_path):
    train_set, _ = datasets(write_root(tmp_path / "root", num_train=4))
    with pytest.raises(ValueError, match=r"^cls_label of the training batch holds 2 NaN"):
        train(tiny_net(), _NaNLabels(train_set), settings(tmp_path / "w"), device="cpu", log=lambda m: None)
