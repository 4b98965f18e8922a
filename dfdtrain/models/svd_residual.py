"""SVD residual fine-tuning after Effort (Yan et al., ICML'25; ``finetune.method: svd_residual``): each targeted
frozen nn.Linear of the backbone is split by SVD into a frozen principal part and a few trainable singular triplets.

After the official code (github.com/YZY-stack/Effort-AIGI-Detection, ``DeepfakeBench/training/detectors/
effort_detector.py`` at commit 96f5dea2b534d400cfd7003f053c7e93c8e16461): HF CLIP ViT-L/14's self-attention q, k, v
and out projections (1024x1024 each) become ``SVDResidualLinear`` with r = 1024 - 1, i.e. one trainable triplet per
projection, 24 x 4 x (1024 + 1 + 1024) = 196,704 parameters (+ the head); every other backbone tensor is frozen.
Here:

  * the layers are the backbone nn.Linear layers whose last name component is in ``finetune.svd_targets`` (timm
    ViTs: attention ``qkv`` and ``proj``, not the MLP's ``fc1``/``fc2``; HF CLIP names: ``q_proj``, ``k_proj``,
    ``v_proj``, ``out_proj``); ``finetune.svd_residual_rank`` is the number of trainable triplets (Effort's n - r);
  * timm fuses q, k, v into one ``qkv`` Linear [3D, D]; Effort decomposes each projection on its own, so a fused
    layer (``qkv``: 3 row blocks, ``kv``: 2) becomes a ``FusedSVDResidualLinear`` holding one SVDResidualLinear per
    block (``qkv.parts.0`` = q, ...) and the bias; for ViT-L/14 CLIP this gives Effort's 196,704 parameters exactly;
  * the regularizer is ``svd_orthogonal_weight * mean(orth) + svd_singular_weight * mean(keepsv)``, the means over
    every decomposed projection (q, k, v and proj each count once, as the official ``num_reg``). The official
    (commented-out in the release) term is ``lambda_reg * (sum of orth + keepsv) / num_reg`` with lambda_reg = 1:
    both weights equal lambda_reg gives it; both 0 gives the released ``get_losses`` (no extra loss: no regularizer).

Deviations, all numerically equal to the official formulas up to float32 rounding (tests/integration/
test_svd_residual.py checks them against a transcription of the official code):
  * the forward adds ``((x V_res^T) * S_res) U_res^T`` to ``x W_main^T + b`` instead of forming ``W_main + U S V``
    each step, so the backward never computes a full-size weight gradient;
  * the losses never form the [out, out] matrix ``[U_r, U_res][U_r, U_res]^T`` (nor [V_r; V_res]'s): the Frobenius
    norms are expanded into blocks, the frozen ``U_r^T U_r`` and ``V_r V_r^T`` blocks being constants computed
    once; keep-SV expands ``||W_main + R||^2`` likewise. They are computed in float32 with autocast off.
The SVD runs in float32 on the layer's device; its results are stored in the layer's dtype. Tensors derived from
the base weights (``weight_main``, ``U_r``, ``S_r``, ``V_r``) are frozen nn.Parameters and the loss constants
python floats, never buffers (the checkpoint rule of ``dfdtrain.models.finetune_methods``); the original weight
itself is not kept. Memory: per projection ``weight_main`` [m, n] + ``U_r`` [m, k - rank] + ``V_r`` [k - rank, n]
(k = min(m, n)), about three times the original weight, as the official code keeps them.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from dfdtrain.core.errors import DfdError
from dfdtrain.models.finetune import mark_batchnorm_frozen, train_head_only

FUSED_BLOCKS = {"qkv": 3, "kv": 2}  # timm's fused projections: decomposed per row block


def _owned(tensor, dtype):
    return tensor.to(dtype, memory_format=torch.contiguous_format, copy=True)


def _squared_norm(tensor):
    return float("nan") if tensor.is_meta else float(torch.linalg.vector_norm(tensor, dtype=torch.float64)) ** 2


class SVDResidualLinear(nn.Module):
    """A linear layer ``W = U S Vh`` split as Effort's ``SVDResidualLinear``: ``weight_main = U_r diag(S_r) Vh_r``
    (the top ``k - rank`` triplets, frozen) plus trainable ``U_residual`` [out, rank], ``S_residual`` [rank],
    ``V_residual`` [rank, in] (the last ``rank`` triplets), so ``y = x (W_main + U_res diag(S_res) V_res)^T + b``
    and the layer starts as the original one. ``U_r``, ``S_r``, ``V_r`` are kept (frozen) for the orthogonality
    loss; ``bias`` is the original tensor, frozen (None for a block of a fused layer: the fused layer holds it).
    ``merged()`` is a plain nn.Linear with the residual folded in (for export).
    """

    def __init__(self, weight, bias, rank):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        k = min(weight.shape)
        if not 1 <= rank < k:
            raise ValueError(f"the SVD residual rank must be in [1, {k - 1}] for a {tuple(weight.shape)} weight")
        self.rank, dtype = rank, weight.dtype
        keep = k - rank
        with torch.no_grad():
            original = weight.detach().float()
            U, S, Vh = torch.linalg.svd(original, full_matrices=False)  # float32, on the weight's device
            self.weight_main = nn.Parameter(_owned((U[:, :keep] * S[:keep]) @ Vh[:keep], dtype), requires_grad=False)
            self.U_r = nn.Parameter(_owned(U[:, :keep], dtype), requires_grad=False)
            self.S_r = nn.Parameter(_owned(S[:keep], dtype), requires_grad=False)
            self.V_r = nn.Parameter(_owned(Vh[:keep], dtype), requires_grad=False)
            self.U_residual = nn.Parameter(_owned(U[:, keep:], dtype))
            self.S_residual = nn.Parameter(_owned(S[keep:], dtype))
            self.V_residual = nn.Parameter(_owned(Vh[keep:], dtype))
            del U, S, Vh
            self.bias = bias
            if bias is not None:
                bias.requires_grad_(False)
            # python floats (not state): ||W_original||_F^2, ||W_main||_F^2 and the frozen blocks of the
            # orthogonality loss, ||U_r^T U_r - I||_F^2 + (out - k) and ||V_r V_r^T - I||_F^2
            eye = torch.eye(keep, device=weight.device)
            self.original_norm2 = _squared_norm(original)
            self.main_norm2 = _squared_norm(self.weight_main)
            self.u_constant = _squared_norm(self.U_r.float().t() @ self.U_r.float() - eye) + self.out_features - k
            self.v_constant = _squared_norm(self.V_r.float() @ self.V_r.float().t() - eye)

    @classmethod
    def from_linear(cls, linear, rank):
        """The layer for an nn.Linear (its weight decomposed, its bias kept and frozen)."""
        return cls(linear.weight, linear.bias, rank)

    def forward(self, x):
        residual = ((x @ self.V_residual.t()) * self.S_residual) @ self.U_residual.t()
        return F.linear(x, self.weight_main, self.bias) + residual

    def residual_weight(self):
        return (self.U_residual * self.S_residual) @ self.V_residual

    def current_weight(self):
        """``W_main + U_res diag(S_res) V_res`` (the official ``compute_current_weight``)."""
        return self.weight_main + self.residual_weight()

    def compute_orthogonal_loss(self):
        """``0.5 ||[U_r, U_res][U_r, U_res]^T - I||_F + 0.5 ||[V_r; V_res][V_r; V_res]^T - I||_F`` (official), from
        blocks: for A = [U_r, U_res] (m x k), ||A A^T - I_m||^2 = ||A^T A - I_k||^2 + m - k, and ||A^T A - I_k||^2 =
        ||U_r^T U_r - I||^2 (a constant) + 2 ||U_r^T U_res||^2 + ||U_res^T U_res - I||^2; V alike."""
        U_r, V_r, U, V = self.U_r.float(), self.V_r.float(), self.U_residual.float(), self.V_residual.float()
        eye = torch.eye(self.rank, device=U.device)
        u_norm = _block_norm(self.u_constant, U_r.t() @ U, U.t() @ U - eye)
        v_norm = _block_norm(self.v_constant, V_r @ V.t(), V @ V.t() - eye)
        return 0.5 * u_norm + 0.5 * v_norm

    def compute_keepsv_loss(self):
        """``| ||W_current||_F^2 - ||W_original||_F^2 |`` (official), with ||W_main + R||^2 = ||W_main||^2 (a
        constant) + 2 <W_main, R> + ||R||^2 for R = U_res diag(S_res) V_res."""
        U, S, V = self.U_residual.float(), self.S_residual.float(), self.V_residual.float()
        inner = (((U.t() @ self.weight_main.float()) * V).sum(dim=1) * S).sum()
        residual_norm2 = ((U.t() @ U) * (V @ V.t()) * torch.outer(S, S)).sum()
        return (self.main_norm2 - self.original_norm2 + 2 * inner + residual_norm2).abs()

    def merged(self):
        """A plain nn.Linear computing the same function, detached from this one."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight_main.device, dtype=self.weight_main.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight_main.float() + self.residual_weight().float())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def _block_norm(constant, cross, gram):
    """sqrt(constant + 2 ||cross||^2 + ||gram||^2), as one vector norm (whose gradient at 0 is 0, not NaN)."""
    head = torch.tensor([math.sqrt(max(constant, 0.0))], device=cross.device)
    return torch.linalg.vector_norm(torch.cat([head, math.sqrt(2) * cross.flatten(), gram.flatten()]))


class FusedSVDResidualLinear(nn.Module):
    """A fused projection (timm's ``qkv`` [3D, D]) decomposed per row block, as Effort decomposes q, k and v each:
    ``parts`` holds one SVDResidualLinear per block (no bias), ``bias`` the original one, frozen. ``merged()`` is
    the plain fused nn.Linear."""

    def __init__(self, linear, rank, blocks):
        super().__init__()
        self.in_features, self.out_features, self.blocks = linear.in_features, linear.out_features, blocks
        self.parts = nn.ModuleList(SVDResidualLinear(block, None, rank)
                                   for block in linear.weight.detach().chunk(blocks, dim=0))
        self.bias = linear.bias
        if self.bias is not None:
            self.bias.requires_grad_(False)

    def forward(self, x):
        out = torch.cat([part(x) for part in self.parts], dim=-1)
        return out if self.bias is None else out + self.bias

    def current_weight(self):
        return torch.cat([part.current_weight() for part in self.parts])

    def merged(self):
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.parts[0].weight_main.device, dtype=self.parts[0].weight_main.dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.cat([part.merged().weight for part in self.parts]))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, blocks={self.blocks}"


def _blocks(name, linear):
    blocks = FUSED_BLOCKS.get(name, 1)
    return blocks if linear.out_features % blocks == 0 else 1


def add_svd_residual(module, targets, rank):
    """Replace every nn.Linear under ``module`` whose last name component is in ``targets`` by an SVD residual
    layer with ``rank`` trainable triplets (per block of a fused ``qkv``/``kv``); returns the qualified names
    replaced. Every layer is checked before any is replaced (a rank too large for one is a DfdError)."""
    found = [(name, child, child_name, layer) for name, child in module.named_modules()
             for child_name, layer in child.named_children()
             if isinstance(layer, nn.Linear) and child_name in targets]
    for name, _, child_name, layer in found:
        k = min(layer.out_features // _blocks(child_name, layer), layer.in_features)
        if rank >= k:
            raise DfdError(f"finetune.svd_residual_rank {rank} leaves no frozen principal part of "
                           f"{name}.{child_name} ({k} singular values per block): it must be below {k}")
    for _, child, child_name, layer in found:
        blocks = _blocks(child_name, layer)
        wrapped = (FusedSVDResidualLinear(layer, rank, blocks) if blocks > 1
                   else SVDResidualLinear.from_linear(layer, rank))
        setattr(child, child_name, wrapped)
    return [f"{name}.{child_name}" if name else child_name for name, _, child_name, _ in found]


def svd_residual_losses(module):
    """(mean orthogonality loss, mean keep-SV loss) over every SVDResidualLinear under ``module`` (each block of a
    fused layer counts once), in float32 with autocast off."""
    layers = [layer for layer in module.modules() if isinstance(layer, SVDResidualLinear)]
    with torch.autocast(layers[0].U_residual.device.type, enabled=False):
        orthogonal = torch.stack([layer.compute_orthogonal_loss() for layer in layers]).mean()
        keepsv = torch.stack([layer.compute_keepsv_loss() for layer in layers]).mean()
    return orthogonal, keepsv


def svd_residual_finetune(detector, config):
    """Effort (Yan et al., ICML'25): each backbone nn.Linear named in ``finetune.svd_targets`` keeps its top
    singular triplets frozen and trains its last ``svd_residual_rank`` (U, S, V); only these and the head train.
    Returns the regularizer ``svd_orthogonal_weight * orth + svd_singular_weight * keepsv`` (module means; None
    when both weights are 0). A backbone with no such layer is refused (nothing of it would train)."""
    train_head_only(detector)
    replaced = add_svd_residual(detector.backbone, set(config.svd_targets), config.svd_residual_rank)
    if not replaced:
        raise DfdError(f"finetune.svd_targets {list(config.svd_targets)} name no nn.Linear of the backbone "
                       f"{type(detector.backbone).__name__}")
    if config.freeze_batchnorm:
        mark_batchnorm_frozen(detector.backbone)
    orthogonal_weight, singular_weight = config.svd_orthogonal_weight, config.svd_singular_weight
    if not (orthogonal_weight or singular_weight):
        return None
    backbone = detector.backbone

    def regularizer():
        orthogonal, keepsv = svd_residual_losses(backbone)
        return orthogonal_weight * orthogonal + singular_weight * keepsv

    return regularizer
