"""Registry of recurrent mixers: one file per mixer, one entry here per layout letter."""

from .base import RecurrentMixer
from .deltanet import GatedDeltaNetMixer
from .lightning import LightningMixer
from .mamba2 import Mamba2Mixer

MIXERS: dict[str, type[RecurrentMixer]] = {
    "M": Mamba2Mixer,
    "D": GatedDeltaNetMixer,
    "L": LightningMixer,
}

__all__ = ["MIXERS", "RecurrentMixer", "Mamba2Mixer", "GatedDeltaNetMixer", "LightningMixer"]
