"""What a run writes for people to read: metrics.jsonl, TensorBoard events, metric tables,
prediction grids, confusion matrices and training curves."""
