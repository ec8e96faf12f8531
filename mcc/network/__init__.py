"""The MCC network assembled from the library's parts, its config and its training step."""

from mcc.network.config import MCCConfig
from mcc.network.decoder import LargeFOV
from mcc.network.mcc_net import MCCLabels, MCCLosses, MCCNet, MCCTrainingStep

__all__ = ["LargeFOV", "MCCConfig", "MCCLabels", "MCCLosses", "MCCNet", "MCCTrainingStep"]
