"""Bottleneck adapters after each transformer block of a timm ViT (``finetune.method: adapter``), as StA (Yan et
al., CVPR'25, "Generalizing Deepfake Video Detection with Plug-and-Play Video-Level Blending and Spatiotemporal
Adapter Tuning").

The official code: github.com/YZY-stack/StA4Deepfake, ``training/detectors/clip_adapter_detector.py`` (commit
1a00b320cb6a2ffe92f45083ae5145c3644c1474), ``ViT_Adapter`` and ``ResidualAttentionBlock``:
  * where: sequential, after the whole block (``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)); x = Adapter(x)``);
  * what: ``x + GELU(up(mix(GELU(down(x)))))``: down D -> D/2 (``int(1024 * 0.5)`` for CLIP ViT-L), GELU, the
    spatiotemporal mixing of the patch tokens (the class token skips it), GELU, up D/2 -> D, GELU, residual; no
    scaling (``adapter_scale=0.5`` is passed but unused);
  * init: ``up`` weight and bias zero (``init_weights``), so each adapter starts as the identity (GELU(0) = 0);
  * what trains: the adapters (StA also trains a zero-initialised temporal position embedding and the final norm).
Here: ``adapter_dim`` is the bottleneck (0 = D/2, as StA). The mixing: none by default (the bottleneck alone,
as AdaptFormer's, but sequential); with ``adapter_temporal`` StA's temporal branch reduced to one depthwise
temporal convolution (kernel 3) over each clip's frames with its residual, ``h + conv_t(h)``, then the GELU. Left
out of StA's mixing: the multi-scale (3, 5, 7) stacks of depthwise conv + BatchNorm, the spatial (1, k, k) branch
and the cross-attention between the two branches.

The backbone sees (B*T) images, so a temporal adapter learns the clip from two hooks: one on the detector records
the clip shape and mask of each call (``ClipShape``), one on the backbone keeps it only when the detector is
what calls it (run on its own, e.g. ``dfdtrain export``'s wrapper, the backbone has no clip: a temporal adapter
refuses more than one image in one line; one image is a one-frame clip). Padded frames are zeros in the
convolution (the detector does not send them; sent anyway, e.g. every frame with the mask, they are zeroed).
Adapters cannot be merged into plain layers (no ``merged()``): export keeps them as modules.
"""

import torch
from torch import nn

from dfdtrain.core.errors import DfdError
from dfdtrain.models.finetune import mark_batchnorm_frozen, train_head_only


class ClipShape:
    """What the detector's last call told the temporal adapters: (B, T) and the mask [B,T] (None = all real);
    ``armed``: set by the detector, taken by the backbone's next call (a direct call finds it unset)."""

    def __init__(self):
        self.shape, self.mask, self.armed = None, None, False


class Adapter(nn.Module):
    """``x + GELU(up(mix(GELU(down(x)))))`` on tokens [N, L, D] (StA's ViT_Adapter, see the module docstring);
    ``up`` starts at zero, so the adapter starts as the identity. ``clip``: a ClipShape for the temporal
    variant (a depthwise Conv1d over each clip's frames of the patch tokens' bottleneck features)."""

    def __init__(self, width, bottleneck, prefix_tokens=1, clip=None):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.act = nn.GELU()
        self.prefix_tokens = prefix_tokens
        self.clip = clip  # a plain attribute: shared by the backbone's adapters, not in the state dict
        self.temporal = None
        if clip is not None:
            self.temporal = nn.Conv1d(bottleneck, bottleneck, kernel_size=3, padding=1, groups=bottleneck)

    def forward(self, x):
        h = self.act(self.down(x))
        if self.temporal is not None:
            patches = self.act(self._mix_frames(h[:, self.prefix_tokens:]))  # the class token skips the mixing
            h = torch.cat([h[:, :self.prefix_tokens], patches], dim=1)
        return x + self.act(self.up(h))

    def _mix_frames(self, h):
        """h [N, P, r] of N real frames -> the same plus a depthwise convolution over each clip's frames."""
        count, tokens, width = h.shape
        if self.clip.shape is None and count > 1:  # one image alone is a one-frame clip (e.g. the FLOP count)
            raise DfdError("finetune.adapter_temporal: the temporal adapters mix the frames of a clip, so the "
                           f"backbone must run inside the detector on clips [B,T,C,H,W], not on {count} images")
        batch, time = self.clip.shape or (1, 1)
        real = None
        if count == batch * time and self.clip.mask is not None:  # every frame sent: padded ones count as zeros
            h = h * self.clip.mask.reshape(-1, 1, 1).to(h.dtype)
        elif count != batch * time:  # the detector sent only the real frames: scatter them into [B*T] (zeros)
            mask = self.clip.mask
            if mask is None or count != int(mask.sum()):
                raise DfdError(f"finetune.adapter_temporal: {count} frames reached the backbone for clips "
                               f"[{batch},{time}] (run the backbone through the detector)")
            real = mask.reshape(-1)
            full = h.new_zeros((batch * time, tokens, width))
            full[real] = h
            h = full
        series = h.reshape(batch, time, tokens, width).permute(0, 2, 3, 1).reshape(batch * tokens, width, time)
        mixed = (series + self.temporal(series)).reshape(batch, tokens, width, time).permute(0, 3, 1, 2)
        mixed = mixed.reshape(batch * time, tokens, width)
        return mixed if real is None else mixed[real]

    def extra_repr(self):
        return f"prefix_tokens={self.prefix_tokens}, temporal={self.temporal is not None}"


def _run_adapter(block, args, output):
    """Forward hook of an adapted block: its adapter after the block (sequential, as StA)."""
    return block.adapter(output)


def _record_clip(detector, args, kwargs):
    """Forward pre-hook of the detector: the clip shape and mask of this call, for the temporal adapters."""
    frames = args[0] if args else kwargs.get("frames")
    mask = args[1] if len(args) > 1 else kwargs.get("mask")
    clip = detector.backbone._dfdtrain_clip
    if frames is None or frames.dim() != 5:  # cached features [B,T,D]: the backbone does not run
        clip.shape, clip.mask, clip.armed = None, None, False
        return None
    clip.shape, clip.mask, clip.armed = (frames.shape[0], frames.shape[1]), mask, True
    return None


def _take_clip(backbone, args):
    """Forward pre-hook of the backbone: the clip recorded by the detector is for this call; a call not made by
    the detector (nothing armed) gets none (kept after the call: a gradient checkpoint re-runs the blocks)."""
    clip = backbone._dfdtrain_clip
    if not clip.armed:
        clip.shape, clip.mask = None, None
    clip.armed = False
    return None


def transformer_blocks(backbone):
    """The transformer blocks of a timm ViT backbone (``blocks``, each with ``attn`` and ``mlp``) and their width;
    a backbone without them is refused in one line."""
    blocks = getattr(backbone, "blocks", None)
    width = getattr(backbone, "embed_dim", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or not len(blocks) or not isinstance(width, int) \
            or not all(hasattr(block, "attn") and hasattr(block, "mlp") for block in blocks):
        raise DfdError(f"finetune.method adapter: the backbone {type(backbone).__name__} has no transformer blocks "
                       "(a timm ViT's blocks with attn and mlp) to put adapters after")
    return list(blocks), width


def insert_adapters(detector, bottleneck=0, temporal=False):
    """An Adapter after each transformer block of ``detector.backbone`` (``blocks.i.adapter``; a forward hook
    runs it). ``bottleneck`` 0: half the block width (StA). ``temporal``: the adapters also mix each clip's frames
    (the detector's and backbone's hooks tell them the clip). Returns the adapters."""
    blocks, width = transformer_blocks(detector.backbone)
    if any(hasattr(block, "adapter") for block in blocks):
        raise DfdError("finetune.method adapter: the backbone already has adapters")
    clip = None
    if temporal:
        clip = ClipShape()
        detector.backbone._dfdtrain_clip = clip
        detector.register_forward_pre_hook(_record_clip, with_kwargs=True)
        detector.backbone.register_forward_pre_hook(_take_clip)
    prefix_tokens = getattr(detector.backbone, "num_prefix_tokens", 1)
    weight = blocks[0].mlp.fc1.weight if hasattr(blocks[0].mlp, "fc1") else next(blocks[0].parameters())
    adapters = []
    for block in blocks:
        block.adapter = Adapter(width, bottleneck or width // 2, prefix_tokens, clip).to(weight.device, weight.dtype)
        block.register_forward_hook(_run_adapter)
        adapters.append(block.adapter)
    return adapters


def adapter_finetune(detector, config):
    """StA's adapters (see the module docstring): a bottleneck of ``finetune.adapter_dim`` (0 = half the width)
    after each transformer block, with a temporal convolution over the clip's frames when
    ``finetune.adapter_temporal``; only the adapters and the head train. No regularizer."""
    train_head_only(detector)
    insert_adapters(detector, config.adapter_dim, config.adapter_temporal)  # new modules: requires_grad on
    if config.freeze_batchnorm:
        mark_batchnorm_frozen(detector.backbone)
