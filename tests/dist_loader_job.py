"""Run under torchrun (2 processes, gloo): one training epoch and one evaluation pass over real shards.

Every training step does an all_reduce, as DDP would: unequal batch counts across ranks would hang here
(the test's timeout catches it). Rank 0 writes what each rank saw to the JSON file given as argv[3].
"""

import json
import sys

import torch
import torch.distributed as dist

from dfdtrain.config import ClipSpec, DataConfig, SamplerConfig
from dfdtrain.data.loading.loader import VideoLoader
from dfdtrain.core.distributed import gather_to_rank0

CLIP = ClipSpec(sampler=SamplerConfig("uniform", 4), crop="center", image_size=32, mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225))


def main(train_shards, eval_shards, out_path, workers):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    data = DataConfig(batch_size=2, num_workers=int(workers), decoder="pyav")
    train = VideoLoader(train_shards.split(","), CLIP, data, train=True, seed=5)
    steps, shapes = 0, set()
    for batch in train:
        dist.all_reduce(torch.ones(1))  # a collective per step, like DDP's gradient all-reduce
        shapes.add((tuple(batch["frames"].shape), batch["frames"].dtype == torch.float32,
                    tuple(batch["mask"].shape), tuple(batch["label"].shape)))
        steps += 1
    evaluation = VideoLoader(eval_shards.split(","), CLIP, data, train=False)
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
