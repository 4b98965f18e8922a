"""Fixed batches for the Trainer, with no shards and no decoding: ``FixedBatches``, a ``BatchSource``
(``dfdtrain.training.batch_source``) for the tests and the benchmarks that drive ``Trainer.train_step``.

    FixedBatches(steps, rank, per_rank)     # seeded random clips: each step, this rank's slice of a global batch
    FixedBatches.repeating(batch, steps)    # one batch dict, already on its device, ``steps`` times per epoch
"""

import torch

GLOBAL_BATCH = 4  # clips per step over all ranks (the tests' default)


class FixedBatches:
    """This rank's slice of fixed random clips, one batch per step: the loader interface the Trainer takes.

    The clips of every rank are drawn from one generator seeded with ``seed``: ``frames`` [steps * global_batch,
    frames, 3, size, size] (standard normal) and ``labels`` [steps * global_batch] (0/1), so N ranks together
    train on exactly the clips one process does. Step ``s`` gives rank ``rank`` the ``per_rank`` clips from row
    ``s * global_batch + rank * per_rank``; the second clip of a global batch has its last frame padded (mask
    False), as real batches have. Keys are the row numbers. ``frames`` may be changed in place before iterating
    (a test makes one step's clips NaN). The same clips every epoch; nothing is ever skipped.
    """

    def __init__(self, steps, rank=0, per_rank=GLOBAL_BATCH, *, global_batch=GLOBAL_BATCH, frames=3, size=32,
                 seed=1, device="cpu"):
        data = torch.Generator().manual_seed(seed)
        self.frames = torch.randn(steps * global_batch, frames, 3, size, size, generator=data).to(device)
        self.labels = torch.randint(0, 2, (steps * global_batch,), generator=data).float().to(device)
        mask = torch.ones(global_batch, frames, dtype=torch.bool)
        mask[1, frames - 1] = False  # a padded frame, as real batches have
        self.mask = mask[rank * per_rank: (rank + 1) * per_rank].to(device)
        self.steps, self.rank, self.per_rank, self.global_batch = steps, rank, per_rank, global_batch
        self.batch = None  # repeating: the one batch every step yields
        self.skipped = []

    @classmethod
    def repeating(cls, batch, steps):
        """``batch`` (a batch dict {"frames", "mask", "label", "key", ...} already on the device) ``steps`` times
        per epoch, as it is: no decode, no copy (the benchmarks time the step alone)."""
        source = cls(0)  # no random clips
        source.steps, source.batch = steps, batch
        return source

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return self.steps

    def __iter__(self):
        for step in range(self.steps):
            if self.batch is not None:
                yield self.batch
                continue
            start = step * self.global_batch + self.rank * self.per_rank
            rows = slice(start, start + self.per_rank)
            yield {"frames": self.frames[rows], "mask": self.mask, "label": self.labels[rows],
                   "key": [str(index) for index in range(rows.start, rows.stop)]}
