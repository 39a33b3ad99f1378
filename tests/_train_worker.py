"""A training run with test probes, launched by torchrun from the tests:

    python -m torch.distributed.run --nproc_per_node=2 tests/_train_worker.py [--probe FILE] ARGS...

``--probe FILE``: at the end of training every rank runs the trained model (ZeRO-3 gathers its weights) on a
fixed batch and rank 0 saves the logits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.run import run_stage  # noqa: E402

PROBE_IDS = torch.arange(3, 43).view(2, 20)  # (2, 20): text ids and special tokens of every tiny vocabulary


class Probe(TrainerCallback):
    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        with torch.no_grad():  # every rank: ZeRO-3 all-gathers each layer's weights in forward
            logits = model(input_ids=PROBE_IDS.to(args.device)).logits.float().cpu()
        if args.process_index == 0:
            torch.save(logits, self.path)


def main() -> None:
    argv, callbacks = sys.argv[1:], []
    if "--probe" in argv:
        i = argv.index("--probe")
        callbacks.append(Probe(argv[i + 1]))
        del argv[i:i + 2]
    run_stage("pretrain", argv, callbacks=callbacks)


if __name__ == "__main__":
    main()
