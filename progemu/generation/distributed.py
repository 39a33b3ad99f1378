"""Data-parallel batch generation: the ranks of one launch share a manifest, each item done exactly once.

    torchrun --standalone --nproc_per_node=8 -m progemu generate --model M --input manifest.jsonl --out OUT
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 -m progemu generate ...

Any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR`` / ``MASTER_PORT``) works.
Rank 0 lists the unfinished items once and sends the list to every rank; the ranks then *claim* batches of it
from one shared counter (a ``torch.distributed`` store), so a rank that happens to get cheap batches (small edit
regions, short texts) simply claims more, and all ranks run out of work within one batch of each other.
Each rank runs on ``cuda:LOCAL_RANK`` where there are GPUs. A rank that dies loses only the batch it was on:
every finished item has its ``record.json``, and a rerun with any number of ranks does what is missing.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

from progemu.errors import ProgEmuError

# generous: rank 0 lists a large output folder before the others can start, and the last barrier waits for the
# slowest rank's last batch
_TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the launch (rank 0 of 1 when no launcher set the variables)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Ranks:
        env = os.environ if env is None else env
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError as err:
            raise ProgEmuError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({err})") from err
        if world < 1 or not 0 <= rank < world or local < 0:
            raise ProgEmuError(f"inconsistent launch: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
        return cls(rank, world, local)

    def device(self, requested: str | None) -> str:
        """The asked device; else ``cuda:LOCAL_RANK`` where there are GPUs (one GPU per rank), else the CPU."""
        import torch

        if requested:
            return requested
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            if self.local_rank >= n:
                raise ProgEmuError(f"LOCAL_RANK {self.local_rank} but this node has {n} GPU(s): start at most {n} "
                                   "ranks per node (--nproc_per_node)")
            torch.cuda.set_device(self.local_rank)
            return f"cuda:{self.local_rank}"
        return "cpu"


class Group:
    """What the ranks share: a barrier, rank 0's objects, everyone's objects, and a counter to claim work from.
    Alone (world 1) every call is local and nothing is started."""

    def __init__(self, ranks: Ranks, timeout: datetime.timedelta = _TIMEOUT):
        self.ranks, self._next, self._store = ranks, 0, None
        if ranks.world == 1:
            return
        import torch.distributed as dist

        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ProgEmuError(f"WORLD_SIZE={ranks.world} but {var} is not set: start the ranks with torchrun "
                                   "(or set MASTER_ADDR / MASTER_PORT as torchrun does)")
        if not dist.is_initialized():  # gloo: the messages are small control messages, on CPU and GPU machines alike
            dist.init_process_group("gloo", rank=ranks.rank, world_size=ranks.world, timeout=timeout)
        # the counter lives in the launch's own key-value store, under a key of this job alone
        store = dist.distributed_c10d._get_default_store()
        self._store = dist.PrefixStore(f"progemu-generate/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/",
                                       store)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.ranks.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.ranks.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.ranks.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.ranks.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def claim(self) -> int:
        """The next unclaimed batch index (0, 1, 2, ... over all ranks together; each index handed out once)."""
        if self._store is None:
            self._next += 1
            return self._next - 1
        return int(self._store.add("next-batch", 1)) - 1

    def close(self) -> None:
        if self.ranks.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
