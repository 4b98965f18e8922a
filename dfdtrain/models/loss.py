"""The training objective: binary cross-entropy of the video logits (1 = fake), the one definition of the loss
that training minimises and that validation and evaluation report."""

import torch
import torch.nn.functional as F


def video_bce(video_logits, labels, label_smoothing=0.0, pos_weight=None):
    """Mean BCE of logits [B] against labels [B] (0/1), in float32 at least (float64 stays float64).

    ``label_smoothing`` pulls targets towards 0.5; ``pos_weight`` weights the fake class (class weights).
    """
    dtype = torch.promote_types(video_logits.dtype, torch.float32)
    targets = labels.to(dtype) * (1 - label_smoothing) + 0.5 * label_smoothing
    return F.binary_cross_entropy_with_logits(video_logits.to(dtype), targets, pos_weight=pos_weight)
