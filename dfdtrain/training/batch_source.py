"""``BatchSource``: what the Trainer reads its batches from. ``VideoLoader`` is the one the Trainer builds over
``data.train_shards`` / ``data.val_shards``; ``Trainer(config, train_loader=..., val_loader=...)`` takes any
other object of this shape instead (``dfdtrain.testing.batches.FixedBatches``: fixed clips for the tests and
the benchmarks, no decoding). The Protocol states the interface; nothing checks it at run time.

A batch is a dict of one rank's clips, on the training device:
    frames   float [B, T, C, H, W]  the model's input (``features`` [B, T, D] instead with data.source=embeddings)
    mask     bool [B, T]            the real frames (False: padding of a shorter clip)
    label    float [B]              1 = fake
    key      list of B str          the videos' keys (training counts its samples by them)
    meta     list of B dict         each video's metadata (validation reads dataset, method, group, shard)
"""

from typing import Any, Dict, Iterator, List, Protocol

Batch = Dict[str, Any]


class BatchSource(Protocol):
    """Batches for one rank. The training source draws ``len()`` batches per epoch, anew for each
    ``set_epoch(epoch)`` and the same again for the same epoch (a resumed run replays the epoch's batches it
    already trained); a validation source yields each of this rank's videos once and needs no length.
    ``skipped``: a record ({"key", "reason", "detail"?}) per sample that could not be used, appended while
    iterating; report.json counts them and validation names the first ones. A source may also count the
    storage faults it retried in ``io_faults`` (a Counter by kind, emptied by the Trainer when it reads it)."""

    skipped: List[dict]

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...
