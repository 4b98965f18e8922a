"""Score a loader's videos on every rank, gather the scores on rank 0, compute the metrics there."""

import torch
import torch.nn.functional as F

from dfdtrain.data.loader import gather_to_rank0
from dfdtrain.metrics import evaluate_predictions


def score_videos(model, loader, context, precision="fp32", embeddings=False):
    """Per-video records {key, label, video_score, frame_scores, meta fields} from this rank's share."""
    records = []
    autocast = torch.autocast(device_type=context.device.type, dtype=torch.bfloat16) if precision == "bf16" \
        else torch.autocast(device_type=context.device.type, enabled=False)
    model.eval()
    with torch.inference_mode(), autocast:
        for batch in loader:
            inputs = batch["features"] if embeddings else batch["frames"]
            video_logits, frame_logits = model(inputs, batch["mask"])
            video_scores = torch.sigmoid(video_logits.float()).cpu()
            frame_scores = torch.sigmoid(frame_logits.float()).cpu()
            mask = batch["mask"].cpu()
            for position, key in enumerate(batch["key"]):
                meta = batch["meta"][position]
                records.append({
                    "key": key, "label": int(batch["label"][position].item()),
                    "video_score": float(video_scores[position]),
                    "video_logit": float(video_logits[position].float()),
                    "frame_scores": frame_scores[position][mask[position]].tolist(),
                    "dataset": meta.get("dataset"), "method": meta.get("method"),
                })
    return records


def evaluate(model, loader, context, threshold=0.5, precision="fp32", embeddings=False):
    """(metrics, records) on rank 0 — metrics include ``loss`` (video BCE) — and (None, None) elsewhere."""
    records = gather_to_rank0(score_videos(model, loader, context, precision, embeddings))
    if records is None:
        return None, None
    if not records:
        return {"loss": None, "videos": 0}, records
    logits = torch.tensor([record["video_logit"] for record in records])
    labels = torch.tensor([float(record["label"]) for record in records])
    metrics = evaluate_predictions(records, threshold=threshold)
    metrics["loss"] = float(F.binary_cross_entropy_with_logits(logits, labels))
    return metrics, records
