"""Pretraining on image <-> report pairs (tasks report2image, image2report).

    torchrun --nproc_per_node=N -m train.pretrain --config tiny-pretrain [--max_steps 100 --deepspeed zero3 ...]
    make pretrain [CONFIG=base-pretrain NGPUS=8 NNODES=2 HOSTFILE=hosts RESUME=1]
"""

from train.run import main

if __name__ == "__main__":
    main("pretrain")
