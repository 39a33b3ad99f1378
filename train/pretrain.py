"""Pretraining on image <-> report pairs (tasks report2image, image2report).

    torchrun --nproc_per_node=N -m train.pretrain --config tiny-pretrain [--max_steps 100 --deepspeed zero3 ...]
    make pretrain [CONFIG=base-pretrain NGPUS=8 NNODES=2 HOSTFILE=hosts RESUME=1]
"""

from train import run


def main(argv: list[str] | None = None) -> None:
    run.main("pretrain", argv)


if __name__ == "__main__":
    main()
