"""Fine-tuning on counterfactual pairs (tasks icg, edit), from a pretrain run's final/ folder or a text LLM.

    torchrun --nproc_per_node=N -m train.finetune --config tiny-finetune [--init_from runs/pretrain-tiny/final ...]
    make finetune [CONFIG=base-finetune NGPUS=8 NNODES=2 HOSTFILE=hosts RESUME=1]
"""

from train import run


def main(argv: list[str] | None = None) -> None:
    run.main("finetune", argv)


if __name__ == "__main__":
    main()
