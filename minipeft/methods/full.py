"""Full fine-tuning (F10.2): every weight of the model trains. The baseline every PEFT method is measured
against: its trainable% is 100, and its checkpoint is the whole model."""

from __future__ import annotations

from .base import PeftModel
from .registry import register


@register
class FullFineTuning(PeftModel):
    name = "full"
    freezes_base = False
