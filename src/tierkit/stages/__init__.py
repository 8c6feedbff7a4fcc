"""Pipeline stages above the toolboxes: teacher, fit, quantize, finetune and export, and the run that chains the
first three (stages.run). The only place Trainers are built (stages.trainer)."""
