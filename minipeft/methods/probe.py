"""Linear probing (F10.1, seed 002: a task head trained on frozen features): the whole model is
frozen and only the output head trains.

The head is the last linear map, hidden (B, T, C) → logits (B, T, V). Both of our models tie it to
the token embedding (T5 v1.0, GPT-2), so training it in place would also change the input
embeddings; the probe therefore gives the model its own copy, ``lm_head``, initialised from the
tied matrix (so the probe starts exactly at the base model), and trains only that copy.
The probe measures how much of a task the frozen features already carry.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import PeftModel
from .registry import register


@register
class LinearProbe(PeftModel):
    name = "probe"

    def attach(self):
        head = self.tied_head_weight()                                              # (V, C)
        self.probe_head = nn.Linear(head.shape[1], head.shape[0], bias=False)
        with torch.no_grad():
            self.probe_head.weight.copy_(head)
        self.original_head = [self.model.lm_head]  # a list, so the old head is not registered twice
        self.model.lm_head = self.probe_head

    def tied_head_weight(self):
        model = self.model
        if model.lm_head is not None:
            return model.lm_head.weight
        return model.shared.weight if getattr(model, "is_encoder_decoder", False) else model.wte.weight

    def set_enabled(self, enabled: bool):
        super().set_enabled(enabled)
        self.model.lm_head = self.probe_head if enabled else self.original_head[0]
