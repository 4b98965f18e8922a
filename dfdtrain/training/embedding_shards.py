"""The ``dfdtrain embed`` job: writes embedding shards, the cache that head-only training reads. It runs a frozen
backbone once over every video's sampled frames and stores the per-video frame features (``write_embeddings``).

A reference notebook's key finding: with the backbone frozen, caching its frame embeddings makes fitting
temporal heads "extremely quick" (seconds instead of hours). Output shards mirror the video shards:
``<split>-%06d.tar`` with ``<key>.npy`` (features [T,D], float16 by default) and ``<key>.json`` (the sample's
metadata plus ``mask``, ``frame_indices`` and the backbone), an index.json, and DALI indexes. Training reads
them with ``data.source=embeddings`` (VideoLoader(source="embeddings")) and a head-only model.
Frames are sampled deterministically (the evaluation sampler) and not augmented: one fixed view per video.
"""

import collections
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dfdtrain import __version__
from dfdtrain.config import config_to_dict
from dfdtrain.data import storage
from dfdtrain.data.ingest.found import safe_key
from dfdtrain.data.loading.loader import VideoLoader
from dfdtrain.data.shards.tars import TarShardWriter
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import check_output_folder, write_json
from dfdtrain.models.clip_backbones import is_clip_backbone
from dfdtrain.models.detector import build_detector_from_config

SAMPLES_PER_SHARD = 2000


class _SplitWriter:
    """Rolls ``<split>-%06d.tar`` shards of at most ``per_shard`` samples; remembers what it wrote."""

    def __init__(self, out_dir, split, per_shard):
        self.out_dir, self.split, self.per_shard = Path(out_dir), split, per_shard
        self.records, self.current, self.labels, self.count = [], None, collections.Counter(), 0

    def add(self, key, features, meta):
        if self.current is None:
            name = f"{self.split}-{len(self.records):06d}.tar"
            self.current = TarShardWriter(self.out_dir / name).__enter__()
            self.labels, self.count = collections.Counter(), 0
        buffer = io.BytesIO()
        np.save(buffer, features, allow_pickle=False)
        self.current.add(key, "npy", buffer.getvalue())
        self.current.add(key, "json", json.dumps(meta).encode())
        self.labels[str(meta["label"])] += 1
        self.count += 1
        if self.count == self.per_shard:
            self.close()

    def close(self):
        if self.current is None:
            return
        self.current.__exit__(None, None, None)
        self.records.append({"name": self.current.path.name, "split": self.split, "samples": self.count,
                             "labels": dict(sorted(self.labels.items())), "bytes": self.current.bytes,
                             "sha256": self.current.sha256})
        self.current = None


def write_embeddings(config, shard_specs, out_dir, device="cpu", dtype="float16", per_shard=SAMPLES_PER_SHARD,
                     progress=True):
    """Embed every video of ``shard_specs`` (globs/lists of video shards) once; returns the index dict."""
    if dtype not in ("float16", "float32"):
        raise DfdError(f"embedding dtype must be float16 or float32, not {dtype!r}")
    started = time.time()
    device = torch.device(device)
    torch.manual_seed(config.seed)  # a randomly initialised backbone (pretrained=False) is reproducible too
    if is_clip_backbone(config.model.backbone):
        raise DfdError(f"embed caches per-frame features for a temporal head; the clip backbone "
                       f"{config.model.backbone} sees the clip as a whole and has none: train it end to end")
    out_dir = check_output_folder(out_dir)
    model = build_detector_from_config(config.model, config.clip).to(device).eval()
    clip = config.clip.resolve(model.backbone_info.data_config)
    writers, skipped, renamed = {}, [], []
    bar = tqdm(desc="embed", unit="video", disable=not progress, mininterval=0.5)
    for spec in shard_specs:
        loader = VideoLoader(spec, clip, config.data, train=False, device=device, rank=0, world_size=1,
                             seed=config.seed)
        with torch.inference_mode():
            for batch in loader:
                features = model.frame_features(batch["frames"], batch["mask"]).float().cpu().numpy()
                for position, (key, meta) in enumerate(zip(batch["key"], batch["meta"])):
                    mask = batch["mask"][position].cpu().tolist()
                    meta = {**meta, "mask": mask, "backbone": model.backbone_info.model_name,
                            "image_size": clip.image_size, "num_features": int(features.shape[-1])}
                    split = safe_key(meta.get("split", "all"))  # the split names the output file
                    written_key = safe_key(key)
                    if written_key != key:  # a hostile or odd member name: never copied into our tar
                        meta["source_key"] = key
                        renamed.append({"key": key, "as": written_key, "shard": meta.get("shard")})
                    if split not in writers:
                        writers[split] = _SplitWriter(out_dir, split, per_shard)
                    writers[split].add(written_key, features[position].astype(dtype), meta)
                    bar.update()
        skipped += loader.skipped
    bar.close()
    for writer in writers.values():
        writer.close()
    shards = [record for writer in writers.values() for record in writer.records]
    index = {"format": "dfdtrain-embeddings/1", "created_by": f"dfdtrain {__version__}",
             "backbone": model.backbone_info.model_name, "image_size": clip.image_size, "dtype": dtype,
             "num_frames": clip.sampler.num_frames, "clip": config_to_dict(clip),
             "sources": [storage.redact(str(spec)) for spec in shard_specs],
             "shards": shards, "totals": {"shards": len(shards), "samples": sum(s["samples"] for s in shards),
                                          "skipped": len(skipped), "seconds": round(time.time() - started, 2)},
             "skipped": skipped}
    if renamed:  # samples whose key was not a safe tar member name, and the name they were written under
        index["renamed_keys"] = renamed
    write_json(out_dir / "index.json", index)
    return index
