"""Pretraining and fine-tuning under DeepSpeed ZeRO (see train/README.md)."""
