"""What every fgia model returns, so one trainer and one extractor serve all of them."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class ModelOutput:
    """Forward result of an fgia model.

    logits:      (B, C) class scores used for prediction (None for pure embedding models).
    head_logits: per-head scores, each trained with the classification loss (CN-Nets: {"conv", "norm"});
                 empty means the loss is applied to `logits`.
    embedding:   (B, D) retrieval feature (CN-Nets: concatenated GAP of both heads' last layers).
    maps:        (B, C, h, w) class-confidence maps used to find the discriminative region, if any.
    attention:   (B, parts, h, w) part-attention maps, each summing to 1 over positions (the hashing model's
                 attention pooling), if any; not class-confidence maps, so never used for regions.
    """

    logits: Tensor | None
    embedding: Tensor | None = None
    head_logits: dict[str, Tensor] = field(default_factory=dict)
    maps: Tensor | None = None
    attention: Tensor | None = None
