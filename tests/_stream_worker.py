"""One rank of the disjointness check, launched by torchrun from tests/test_train_data.py:

    python -m torch.distributed.run --nproc_per_node=2 tests/_stream_worker.py SHARDS OUT.json

Each rank streams its first epoch of the split (the first chunk of each of its 2 data-loader workers: the buffer is
larger than a consumer's share) through the training collator's packing, reads back which (row, task) every packed
sequence came from, and rank 0 writes every rank's list.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _train_helpers import tagged_builder, untag  # noqa: E402

from train.data import PackedStream, load_sources  # noqa: E402

TASKS = ["icg", "report2image", "image2report"]


def main() -> None:
    shards, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    stream = PackedStream(load_sources(shards, "train"), tagged_builder, TASKS, 64, "pack", seed=11, rank=rank,
                          world=world, batch_size=2, buffer=10_000)
    # collate_fn=list keeps every row's own data_state
    loader = torch.utils.data.DataLoader(stream, batch_size=2, num_workers=2, collate_fn=list)
    seen, finished = [], set()
    for batch in loader:
        for row in batch:
            state = row["data_state"]
            if state["worker"] in finished:
                continue  # that worker's epoch 0 is over: this row belongs to the next epoch
            starts = (row["position_ids"] == 0).nonzero()[0]
            seen += [untag(row["input_ids"][s]) for s in starts]
            if state["chunk"] == 1 and state["emitted"] == 0:  # the last row of the worker's first chunk
                finished.add(state["worker"])
        if len(finished) == 2:
            break
    gathered = [None] * world
    dist.all_gather_object(gathered, seen)
    if rank == 0:
        out.write_text(json.dumps(gathered))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
