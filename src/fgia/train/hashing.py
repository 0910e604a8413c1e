"""Losses of the hashing models (`fgia.models.hashing`), registered for `TrainConfig.loss`.

Each term is computed per code length (the model's `code_slices`) and summed over lengths. With relaxed codes
u in (-1, 1)^b of a batch:

* quantisation  mean((|u| - 1)^2): codes close to their sign, so binarising loses little;
* bit balance   mean over bits of (batch mean of the bit)^2: each bit splits the images in half;
* decorrelation ||U^T U / n - I||^2 / b^2 (A2-Net's decorrelation of the attribute vector): bits carry different
  information.

"a2net_hash" adds cross-entropy of each code's cosine classifier (with the config's label smoothing) and
the attention term mean over images of the squared off-diagonal cosines between part-attention maps (parts
look at different places). "dpsh" is the pairwise likelihood of DPSH (Li et al., IJCAI 2016) over the batch's
pairs, theta_ij = u_i . u_j / 2 and loss softplus(theta_ij) - s_ij theta_ij (s_ij = 1 for the same class), plus
the quantisation term; train it with P x K batches (`TrainConfig.pk_images`) so that batches hold positive pairs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fgia.models.output import ModelOutput
from fgia.train.losses import register_loss

if TYPE_CHECKING:
    from fgia.train.config import TrainConfig


def quantization_loss(u: Tensor) -> Tensor:
    """mean((|u| - 1)^2)."""
    return (u.abs() - 1).pow(2).mean()


def balance_loss(u: Tensor) -> Tensor:
    """Mean over bits of the squared batch mean of the bit."""
    return u.mean(0).pow(2).mean()


def decorrelation_loss(u: Tensor) -> Tensor:
    """||U^T U / n - I||_F^2 / b^2."""
    n, bits = u.shape
    gram = u.t() @ u / n
    return (gram - torch.eye(bits, device=u.device, dtype=u.dtype)).pow(2).sum() / bits**2


def attention_overlap_loss(maps: Tensor) -> Tensor:
    """Mean squared off-diagonal cosine between the part-attention maps of each image (B, parts, h, w)."""
    flat = F.normalize(maps.flatten(2), dim=2)
    gram = flat @ flat.transpose(1, 2)
    parts = gram.shape[1]
    if parts < 2:
        return gram.new_zeros(())
    off = gram - torch.diag_embed(torch.diagonal(gram, dim1=1, dim2=2))
    return off.pow(2).sum((1, 2)).mean() / (parts * (parts - 1))


def dpsh_loss(u: Tensor, labels: Tensor) -> Tensor:
    """DPSH negative log-likelihood over the batch's pairs i != j: softplus(theta) - s * theta, theta = u_i.u_j/2."""
    theta = u @ u.t() / 2
    same = (labels[:, None] == labels[None, :]).to(u.dtype)
    off_diagonal = ~torch.eye(len(u), dtype=torch.bool, device=u.device)
    return (F.softplus(theta) - same * theta)[off_diagonal].mean()


class HashingLoss(nn.Module):
    """The weighted terms of the module docstring, summed over a hashing model's code lengths."""

    def __init__(self, code_slices: dict[int, slice], *, classification: bool, pairwise: float, quantization: float,
                 balance: float, decorrelation: float, attention: float, label_smoothing: float) -> None:
        super().__init__()
        self.code_slices = dict(code_slices)
        self.classification, self.label_smoothing = classification, label_smoothing
        self.weights = {"pairwise": pairwise, "quantization": quantization, "balance": balance,
                        "decorrelation": decorrelation}
        self.attention = attention

    def forward(self, output: ModelOutput, labels: Tensor) -> Tensor:
        codes = output.embedding.float()
        total = codes.new_zeros(())
        for bits, part in self.code_slices.items():
            u = codes[:, part]
            if self.classification:
                logits = output.head_logits[str(bits)].float()
                total = total + F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            for name, weight in self.weights.items():
                if weight:
                    total = total + weight * _TERMS[name](u, labels)
        if self.attention and output.attention is not None:
            total = total + self.attention * attention_overlap_loss(output.attention.float())
        return total


_TERMS = {
    "pairwise": dpsh_loss,
    "quantization": lambda u, _: quantization_loss(u),
    "balance": lambda u, _: balance_loss(u),
    "decorrelation": lambda u, _: decorrelation_loss(u),
}


def _code_slices(model: nn.Module) -> dict[int, slice]:
    slices = getattr(model, "code_slices", None)
    if not slices:
        raise ValueError(f"hashing losses need a hashing model (with code_slices), got {type(model).__name__}")
    return slices


@register_loss("a2net_hash")
def _a2net_hash(cfg: TrainConfig, model: nn.Module, quantization: float = 0.1, balance: float = 0.1,
                decorrelation: float = 0.1, attention: float = 0.1, pairwise: float = 0.0) -> HashingLoss:
    return HashingLoss(_code_slices(model), classification=True, pairwise=pairwise, quantization=quantization,
                       balance=balance, decorrelation=decorrelation, attention=attention,
                       label_smoothing=cfg.label_smoothing)


@register_loss("dpsh")
def _dpsh(cfg: TrainConfig, model: nn.Module, quantization: float = 0.1) -> HashingLoss:
    return HashingLoss(_code_slices(model), classification=False, pairwise=1.0, quantization=quantization,
                       balance=0.0, decorrelation=0.0, attention=0.0, label_smoothing=0.0)
