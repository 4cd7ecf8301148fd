"""The hybrid model: attention (full / sliding window), recurrent mixers, decode cache."""

from .attention import Attention
from .hybrid import Block, DecodeCache, HybridLM, token_mixer_class
from .mixers import FAMILIES, MIXERS, RecurrentMixer, register_mixer, unregister_mixer

__all__ = ["Attention", "Block", "DecodeCache", "HybridLM", "MIXERS", "FAMILIES", "RecurrentMixer",
           "register_mixer", "unregister_mixer", "token_mixer_class"]
