"""Pipeline stages above the toolboxes: each one builds and runs its Trainers (quantize, finetune)."""
