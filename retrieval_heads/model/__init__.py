"""The hybrid model: attention (full / sliding window), recurrent mixers, decode cache."""

from .attention import Attention
from .hybrid import Block, DecodeCache, HybridLM
from .mixers import MIXERS, RecurrentMixer

__all__ = ["Attention", "Block", "DecodeCache", "HybridLM", "MIXERS", "RecurrentMixer"]
