"""Run under torchrun (2 processes, gloo): one training epoch and one evaluation pass over real shards.

Every training step does an all_reduce, as DDP would: unequal batch counts across ranks would hang here
(the test's timeout catches it). Rank 0 writes what each rank saw to the JSON file given as argv[3].
"""

import json
import sys

import torch
import torch.distributed as dist

from dfdtrain.data.loader import LoaderConfig, VideoLoader, gather_to_rank0
from dfdtrain.data.sampler import SamplerConfig


def main(train_shards, eval_shards, out_path, workers):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    config = LoaderConfig(shards=train_shards.split(","), batch_size=2, num_workers=int(workers),
                          sampler=SamplerConfig("uniform", 4), image_size=32, crop="center", seed=5)
    train = VideoLoader(config, train=True)
    steps, shapes = 0, set()
    for batch in train:
        dist.all_reduce(torch.ones(1))  # a collective per step, like DDP's gradient all-reduce
        shapes.add((tuple(batch["frames"].shape), batch["frames"].dtype == torch.float32,
                    tuple(batch["mask"].shape), tuple(batch["label"].shape)))
        steps += 1
    eval_config = LoaderConfig(shards=eval_shards.split(","), batch_size=2, num_workers=int(workers),
                               sampler=SamplerConfig("uniform", 4), image_size=32, crop="center")
    evaluation = VideoLoader(eval_config, train=False)
    seen = [(key, float(label)) for batch in evaluation for key, label in zip(batch["key"], batch["label"].tolist())]
    everything = gather_to_rank0([{"rank": rank, "key": key, "label": label} for key, label in seen])
    steps_per_rank = gather_to_rank0([steps])
    skipped = gather_to_rank0(evaluation.skipped)
    if rank == 0:
        with open(out_path, "w") as handle:
            json.dump({"train_steps": steps_per_rank, "len": len(train), "shapes": [list(map(str, s)) for s in shapes],
                       "eval": everything, "eval_skipped": skipped, "train_skipped": len(train.skipped)}, handle)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
