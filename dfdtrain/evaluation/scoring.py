"""Score a loader's videos on every rank, gather the scores on rank 0, compute the metrics there.

Used by training's validation (``Trainer.validate``) and by ``dfdtrain evaluate`` alike, so both score a video
the same way: the forward pass in the training precision, P(fake) = sigmoid of the head's logit, frame scores
of the real (unmasked) frames, and the loss as training defines it (``video_bce``).
"""

import torch

from dfdtrain.core.distributed import gather_to_rank0
from dfdtrain.core.devices import autocast
from dfdtrain.models.loss import video_bce
from dfdtrain.metrics import REPORTED_RULES, evaluate_predictions, synthetic_metrics


def score_videos(model, loader, device, precision="fp32", embeddings=False):
    """Per-video records {key, label, video_score, video_logit, frame_scores, frame_logits, dataset, method, group,
    shard} of this rank (group: the identity / source pair that splits keep together; the key when the shard has
    none). Scores are raw, sigmoid(logit); the logits let a calibration put the frames on the verdict's scale."""
    records = []
    model.eval()
    with torch.inference_mode(), autocast(device, precision):
        for batch in loader:
            inputs = batch["features"] if embeddings else batch["frames"]
            video_logits, frame_logits = model(inputs, batch["mask"])
            video_logits = video_logits.float().cpu()
            video_scores = torch.sigmoid(video_logits)
            frame_scores = torch.sigmoid(frame_logits.float()).cpu()
            frame_logits = frame_logits.float().cpu()
            mask = batch["mask"].cpu()
            for position, key in enumerate(batch["key"]):
                meta = batch["meta"][position]
                records.append({
                    "key": key, "label": int(batch["label"][position].item()),
                    "video_score": float(video_scores[position]),
                    "video_logit": float(video_logits[position]),
                    "frame_scores": frame_scores[position][mask[position]].tolist(),
                    "frame_logits": frame_logits[position][mask[position]].tolist(),
                    "dataset": meta.get("dataset"), "method": meta.get("method"),
                    "group": str(meta.get("group") or key), "shard": meta.get("shard"),
                    **({"synthetic": True, "synthesis": meta.get("synthesis"), "twin_of": meta.get("twin_of")}
                       if meta.get("synthetic") else {}),
                })
    return records


def records_loss(records):
    """The validation loss of scored records: ``video_bce`` of their logits, in float64."""
    logits = torch.tensor([record["video_logit"] for record in records], dtype=torch.float64)
    labels = torch.tensor([float(record["label"]) for record in records], dtype=torch.float64)
    return float(video_bce(logits, labels))


def split_synthetic(records):
    """(the real data's records, the synthetic twins' records): twins (``data.val_synthesis``) are scored like
    every video and reported apart (``summarize``), never in the real data's metrics, loss or calibration."""
    return ([record for record in records if not record.get("synthetic")],
            [record for record in records if record.get("synthetic")])


def summarize(records, threshold=0.5, rules=REPORTED_RULES):
    """``evaluate_predictions`` of the real data's records, plus ``synthetic`` (``synthetic_metrics``: its reals
    against the twins) when the records hold twins."""
    real, twins = split_synthetic(records)
    metrics = evaluate_predictions(real, threshold=threshold, rules=rules)
    if twins:
        metrics["synthetic"] = synthetic_metrics(real, twins, threshold)
    return metrics


def validation_metrics(model, loader, device, threshold=0.5, precision="fp32", embeddings=False):
    """(metrics, the real data's records) on rank 0 — metrics include ``loss`` (of the real data) and, with
    twins, ``synthetic`` — and (None, None) on the other ranks."""
    records = gather_to_rank0(score_videos(model, loader, device, precision, embeddings))
    if records is None:
        return None, None
    real, _ = split_synthetic(records)
    if not real:
        return {"loss": None, "videos": 0}, real
    metrics = summarize(records, threshold=threshold)
    metrics["loss"] = records_loss(real)
    return metrics, real


def metric_value(metrics, path):
    """``val_loss`` or a dotted path into the validation metrics (``video.head.auc``); None if undefined."""
    if path == "val_loss":
        return metrics.get("loss")
    value = metrics
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def check_metric_path(path):
    """None if ``path`` names a number in the validation metrics, else the problem (for a config error).

    The metrics' shape is read from a tiny scored set, so the check follows ``evaluate_predictions`` exactly.
    """
    if path == "val_loss":
        return None
    example = [{"key": str(label), "label": label, "video_score": 0.25 + label / 2, "frame_scores": [0.5],
                "dataset": None, "method": None} for label in (0, 1)]
    example.append({**example[1], "key": "0+sbi", "synthetic": True, "synthesis": "sbi"})  # data.val_synthesis
    value = summarize(example, threshold=0.5)
    walked = []
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            known = ", ".join(sorted(value)) if isinstance(value, dict) else "none (a number)"
            where = ".".join(walked) or "the validation metrics"
            return f"{path!r} is not a validation metric: {part!r} is not in {where} (there: {known})"
        walked.append(part)
        value = value[part]
    if isinstance(value, dict) or isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{path!r} is not a number of the validation metrics (e.g. video.head.auc, or val_loss)"
    return None
