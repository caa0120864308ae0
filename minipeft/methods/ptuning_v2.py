"""P-tuning v2 (Liu et al. 2022, "P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning
Universally Across Scales and Tasks"): deep prompts, a trained prompt at every layer.

    F4.1  continuous prompts inserted as prefix tokens at every layer (not only the embedding)
    F4.2  reparametrisation optional; prompt length: classification < 20, sequence labelling ≈ 100
    F4.3  multi-task: train one shared prompt on several tasks, then continue on one
          (train.py: ``--task sentiment+nli``, then ``--task nli --init-from THAT_RUN``; README)

The mechanism is prefix tuning's (F5.3, ``prefix.py``): m trained key/value pairs in front of
every attention layer's own. This module reuses that machinery and changes only what the
P-tuning v2 paper changes:

* no reparametrisation by default (``prefix_projection=False``): the paper finds the MLP helps
  on some tasks and hurts on others, so P_θ is trained directly (``prefix_projection=True`` is
  still available);
* aimed at classification (understanding) tasks rather than generation, so the default length is
  short: 16 virtual tokens (F4.2: under 20 for classification);
* prompts at every layer is the definition, so the embedding-only ablation of prefix tuning is
  refused here.

The parameter count is F5.6's, m · 2 · H·D per prefixed attention layer. ``peft`` has no separate
P-tuning v2 class: its documentation points to ``PrefixTuningConfig``, which is this method with
``prefix_on=("decoder",)`` on T5 (see prefix.py). The checkpoint says ``ptuning_v2``, so it cannot
be loaded as a ``prefix`` checkpoint or the other way round.
"""

from __future__ import annotations

import dataclasses

from .prefix import PrefixTuning
from .registry import register


@register
class PTuningV2(PrefixTuning):
    name = "ptuning_v2"

    @dataclasses.dataclass(frozen=True)
    class Options(PrefixTuning.Options):
        num_virtual_tokens: int = 16        # F4.2: classification prefers fewer than 20
        prefix_projection: bool = False     # F4.2: reparametrisation optional, off

        def __post_init__(self):
            super().__post_init__()
            if self.embedding_only:
                raise ValueError("P-tuning v2 puts prompts at every layer (F4.1): embedding_only=True is "
                                 "P-tuning v1 / prompt tuning; use method 'ptuning' or 'prompt'")
            if self.infix:
                raise ValueError("P-tuning v2's prompts come before the input (F4.1); the infix [x; INFIX; y] is "
                                 "prefix tuning's ablation (F5.7): use method 'prefix' with infix=True")
