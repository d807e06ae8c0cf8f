"""Training: the loop (`loop.train_and_evaluate`), the step, the sharded
state, validation of a config, what a run loads from disk (`run_data`, `text_side`, `latent_stats`, `run_config`), restore
and `init_from`, checkpoints, preemption, the optimiser, and a trained run
rebuilt from its workdir (`run.load_run`) for the commands."""
