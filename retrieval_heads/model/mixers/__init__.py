"""Registry of recurrent mixers: one file per mixer; each class declares its letter, family,
Q/K weights and hooks and registers itself with ``@register_mixer`` (``base.py``). Importing a
mixer's module is what registers it, so every built-in mixer is imported here."""

from .base import (EFFECTIVE_ATTENTION_HOOKS, FAMILIES, MIXERS, RecurrenceFamily, RecurrentMixer, register_mixer,
                   unregister_mixer)
from .deltanet import GatedDeltaNetMixer
from .lightning import LightningMixer
from .mamba2 import Mamba2Mixer

__all__ = ["MIXERS", "FAMILIES", "EFFECTIVE_ATTENTION_HOOKS", "RecurrenceFamily", "RecurrentMixer",
           "register_mixer", "unregister_mixer", "Mamba2Mixer", "GatedDeltaNetMixer", "LightningMixer"]
