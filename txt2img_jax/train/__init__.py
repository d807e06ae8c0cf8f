"""Training: the loop (`loop.train_and_evaluate`), the step, the sharded
state, validation of a config, what a run loads from disk (`assets`), restore
and `init_from`, checkpoints, preemption, the optimiser, and a trained run
rebuilt from its workdir (`run.load_run`) for the commands."""
