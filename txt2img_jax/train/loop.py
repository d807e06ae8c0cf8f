"""train_and_evaluate(config, workdir): the whole run, read top to bottom.

checks -> resume check -> mesh -> what the run reads, its model and sampler
(`run.build_for_training`) -> optimiser and sharded init (`state`) ->
restore -> train step -> metrics and evaluators -> loop: each phase one call
into the module that owns it (`docs/architecture.md`). The loss is the
configured objective's (`objectives/`).

The workdir is a local path or a bucket URL (`gs://bucket/run`): the run's
files go through `utils/paths.py`; orbax and TensorBoard's writer are handed
`paths.native(workdir)` and write it themselves.
"""

from __future__ import annotations

import contextlib

from absl import logging
import jax
import ml_collections

from txt2img_jax.evaluation import registry as evaluators
from txt2img_jax.objectives import perceptual as perceptual_lib
from txt2img_jax.train import changes
from txt2img_jax.train import checkpoint_files
from txt2img_jax.train import checkpointing
from txt2img_jax.train import optim
from txt2img_jax.train import preemption
from txt2img_jax.train import restore
from txt2img_jax.train import run as run_lib
from txt2img_jax.train import run_data
from txt2img_jax.train import sharding
from txt2img_jax.train import state as state_lib
from txt2img_jax.train import step as step_lib
from txt2img_jax.train import validate
from txt2img_jax.utils import hostmem
from txt2img_jax.utils import paths
from txt2img_jax.utils import reporting
from txt2img_jax.utils import runaway
from txt2img_jax.utils import runlock

# ---------------------------------------------------------------------------
# train_and_evaluate
# ---------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from workdir if it holds a checkpoint); returns the
  final train metrics and the last evaluation."""
  # --- Checks (before anything compiles or is written).
  validate.use_prng_impl(config)  # Process-wide: before any key is made.
  compiler_options = validate.train_compiler_options(config)
  latent_shape = validate.validate_config(config)
  if warning := optim.unfinished_schedule(config):
    logging.warning("optim.schedule: %s", warning)
  workdir = checkpoint_files.workdir_path(workdir)
  paths.makedirs(workdir)
  # One writer per run: a second process on this workdir stops here, before
  # writing anything (process 0 holds the lock for every host).
  is_main = jax.process_index() == 0
  with runlock.RunLock(workdir) if is_main else contextlib.nullcontext():
    # A resume that changes what the run is stops here, before any write.
    previous = changes.previous_config(workdir)
    changed = changes.check_resume(config, previous) if previous else {}
    return _train(
        config, workdir, latent_shape, compiler_options, previous, changed
    )


def _train(config, workdir, latent_shape, compiler_options, previous, changed):
  # --- Mesh.
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
  rules = sharding.logical_rules(config.mesh.rules, config.mesh.preset)
  repl = sharding.replicated(mesh)
  logging.info(
      "mesh %s over %d devices (%s)",
      dict(mesh.shape),
      jax.device_count(),
      jax.devices()[0].platform,
  )

  # --- Input (data, text side, latent statistics), model and sampler.
  parts, data, stats, generate = run_lib.build_for_training(
      config, workdir, latent_shape
  )

  # --- Optimiser and sharded init (shapes first, then each array is
  # created where it lives).
  tx, schedules, state, state_shardings = state_lib.create_train_state(
      config, parts.model, latent_shape, parts.text.width, mesh, rules
  )
  logging.info("parameters: %s", reporting.param_counts(state.params))

  # --- Restore: resume this run, or take weights from another (init_from).
  ckpt = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
  resumed = ckpt.latest_step() is not None
  if resumed:
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        state,
        state_shardings,
    )
    state = ckpt.restore(abstract)
    logging.info("resumed from %s at step %d", ckpt.directory, int(state.step))
  elif config.init_from:
    state, tx, schedules = restore.init_from_other_run(
        config, state, tx, schedules, state_shardings
    )
  start_step = int(state.step)
  # The run's config.json is written once the checkpoint is known to fit: a
  # resume with a config of another model fails above and leaves it (and a
  # changed one is kept in config_history.jsonl first).
  start_example = changes.settle(
      workdir,
      config,
      previous if resumed else None,
      changed if resumed else {},
      start_step,
      latent_shape,
  )

  # --- The jitted train step: donated state, explicit shardings.
  perceptual = (
      perceptual_lib.load(config.loss.lpips_net)
      if config.loss.lpips_weight > 0
      else None
  )
  frozen = jax.device_put(
      dict(parts.frozen, lpips=perceptual.params if perceptual else {}), repl
  )
  stats_dev = jax.device_put(stats, repl)
  p_train_step = state_lib.jit_train_step(
      step_lib.for_parts(config, parts, tx, schedules, perceptual),
      state_shardings,
      mesh,
      compiler_options,
      rules,
  )

  # --- Metrics (console, TensorBoard, metrics.jsonl) and evaluators: the
  # sample grid and structure benchmark (EMA params).
  reporter = reporting.Reporter(config, workdir, start_step, p_train_step)
  writer = reporter.writer
  evaluator = evaluators.make_evaluator(
      config, workdir, data, parts, generate, frozen, stats_dev, writer
  )

  # --- Loop.
  total = config.total_steps
  batches = run_data.train_batches(
      config, data, parts.text, start_step, start_example=start_example
  )
  last_eval = {}
  with mesh, preemption.StopOnSignal() as stop:
    for step in range(start_step, total):
      batch = hostmem.inputs_ready(sharding.put_batch(next(batches), mesh))
      state, metrics = p_train_step(state, batch, frozen, stats_dev)
      done = step + 1
      stopping = stop.requested(done)  # SIGTERM / SIGINT / preemption.
      # A state is checked (its metrics fetched) before it is saved.
      due = reporter.after_step(done, metrics, stopping)
      if reporter.failure:  # Runaway updates: keep the last good checkpoint.
        ckpt.close()
        writer.flush()
        raise runaway.RunawayError(
            f"run stopped: {reporter.failure}. {ckpt.describe_latest()}"
        )
      if due.checkpoint:
        ckpt.save(done, state)
      if due.sample or due.eval:
        with ckpt.saved_if_failing(done, state):
          if due.sample:
            evaluator.sample_grid(state.ema_params, done)
          if due.eval:
            last_eval = evaluator.evaluate(state.ema_params, done)
      if stopping:
        ckpt.wait()
        stop.report(done, ckpt.directory)
        break
  ckpt.close()
  writer.flush()
  return {
      "train": reporter.last,
      "eval": last_eval,
      "compiles": reporting.num_compiles(p_train_step),
      "resumed": resumed,
      "start_step": start_step,
      "stopped_by": stop.signal_name,
  }  # A signal ended it early, else None.
