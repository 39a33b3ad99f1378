"""A few `tokenizer.train_vq` steps on 2 ranks (launched by torchrun from tests/test_vq_ddp.py); every rank then
saves the weights and buffers it ended with to OUT/rank-R.safetensors, so the test can compare the ranks.

    torchrun --nproc_per_node=2 tests/_vq_ddp_worker.py DATA_DIR OUT_DIR
"""

from __future__ import annotations

import os
import sys

import torch.distributed as dist
from safetensors.torch import save_file

import tokenizer.train_vq as tv
from tokenizer.vq_presets import get_preset

SMALL = dict(patch_size=2, base_channels=8, channel_multipliers=[1, 2], embed_dim=8, codebook_size=64, codebook_dim=4,
             quantizer="vq", image_size=32)
built = []


def build(*args, **kwargs):  # keep the raw model that train() builds, to read this rank's weights afterwards
    result = _build(*args, **kwargs)
    built.append(result[0])
    return result


_build, tv.build = tv.build, build
data, out = sys.argv[1], sys.argv[2]
cfg = get_preset("tiny-base").replace(model=SMALL, image_size=32, data=data, data_format="images", batch_size=2,
                                      steps=4, warmup_steps=1, log_every=1, save_every=100, val_images=4)
tv.train(cfg, out, progress=False)
state = {k: v.detach().cpu().contiguous() for k, v in built[0].state_dict().items()}
save_file(state, os.path.join(out, f"rank-{dist.get_rank()}.safetensors"))
dist.destroy_process_group()
