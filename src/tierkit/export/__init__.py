"""Export of finished runs: per-tier variants, budgets and shipping, CPU-class facts, manifest and report."""
