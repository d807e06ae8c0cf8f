"""Evaluation, a library the training loop imports: the structure benchmark
for the shapes world (`benchmark/`, `structure`), prompts + validation loss
for a user's data (`prompts`), the content-free mosaic measure
(`blockiness`), and the registry that picks a run's evaluator (`registry`)."""
