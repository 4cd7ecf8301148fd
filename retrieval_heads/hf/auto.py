"""``HybridLM`` as a Hugging Face model: ``AutoConfig`` / ``AutoModelForCausalLM`` registration.

``HybridLM.save_pretrained(dir)`` writes ``config.json`` (``model_type``
``retrieval_heads_hybrid``, our ``ModelConfig`` under ``hybrid``) and ``model.safetensors``
(keys ``model.*``). After ``import retrieval_heads``, transformers reads that folder offline::

    import retrieval_heads, transformers
    hf = transformers.AutoModelForCausalLM.from_pretrained(dir)   # HybridLMForCausalLM
    hf(input_ids).logits                                          # == HybridLM's logits
    hf.model                                                      # the HybridLM itself, hooks and all

Why ``PretrainedConfig`` + ``PreTrainedModel`` rather than ``huggingface_hub``'s
``PyTorchModelHubMixin``: the mixin gives ``save_pretrained`` / ``from_pretrained`` /
``push_to_hub`` on the class itself, but the Auto classes, ``pipeline``, ``generate`` and
TransformerLens's bridge only know models registered with transformers through a
``PretrainedConfig`` subclass; the mixin's ``config.json`` has no ``model_type`` and so is
exactly what fails today. The wrapper is thin: the ``HybridLM`` is its ``model`` attribute.

Registration happens when this module is imported; ``retrieval_heads/__init__.py`` arranges
that it is imported as soon as transformers' Auto modelling module is (so ``import
retrieval_heads`` itself stays free of torch and transformers).
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from ..config import ModelConfig

# == retrieval_heads.model.hybrid.HF_MODEL_TYPE / HF_ARCHITECTURE (tests/formats/test_models_out.py);
# spelled here because this module may be imported while retrieval_heads.model is still being
# imported (transformer_lens imports transformers' Auto module), so the model is imported late
HF_MODEL_TYPE = "retrieval_heads_hybrid"
HF_ARCHITECTURE = "HybridLMForCausalLM"


class HybridLMConfig(PretrainedConfig):
    model_type = HF_MODEL_TYPE

    def __init__(self, hybrid: dict | None = None, **kwargs):
        self.hybrid = dict(hybrid) if hybrid is not None else ModelConfig().to_dict()
        from ..model.hybrid import hf_config_dict

        mc = ModelConfig.from_dict(self.hybrid)
        kwargs.setdefault("tie_word_embeddings", bool(mc.tie_embeddings))
        for k, v in hf_config_dict(mc).items():
            if k not in ("model_type", "architectures", "hybrid"):
                kwargs.setdefault(k, v)
        super().__init__(**kwargs)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.hybrid)


class HybridLMForCausalLM(PreTrainedModel):
    config_class = HybridLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _supports_attention_backend = False

    def __init__(self, config: HybridLMConfig):
        from ..model import HybridLM

        super().__init__(config)
        self.model = HybridLM(config.model_config)
        if config.tie_word_embeddings:
            self._tied_weights_keys = {"model.unembed.weight": "model.embed.weight"}
        self.post_init()

    def _init_weights(self, module):  # HybridLM initialises itself; loaded weights overwrite it
        return

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def get_output_embeddings(self):
        return self.model.unembed

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **_) -> CausalLMOutput:
        logits = self.model(input_ids)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                                     ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)


def register() -> None:
    """Register the config and model with transformers' Auto classes (idempotent)."""
    try:
        AutoConfig.register(HF_MODEL_TYPE, HybridLMConfig)
    except ValueError:  # already registered
        pass
    try:
        AutoModelForCausalLM.register(HybridLMConfig, HybridLMForCausalLM)
    except ValueError:
        pass


register()
