"""train_and_evaluate(config, workdir): the whole run, read top to bottom.

logging -> checks -> mesh -> input -> model and optimiser -> sharded init ->
restore -> train step -> evaluators -> loop. The pieces are built by
`run.build_parts` and `state` (shared with sampling, evaluation, health and
perf); the loss is the configured objective's (`objectives/`).

The workdir is a local path or a bucket URL (`gs://bucket/run`): the run's
files go through `utils/paths.py`; orbax and TensorBoard's writer are handed
`paths.native(workdir)` and write it themselves.
"""

from __future__ import annotations

import contextlib

from absl import logging
from clu import metric_writers
import jax
import ml_collections

from txt2img_jax.train import restore
from txt2img_jax.train import run as run_lib
from txt2img_jax.train import state as state_lib
from txt2img_jax.train import validate
from txt2img_jax.train import assets
from txt2img_jax.train import changes
from txt2img_jax.train import checkpoint_files
from txt2img_jax.train import checkpointing
from txt2img_jax.evaluation import registry as evaluators
from txt2img_jax.utils import hostmem
from txt2img_jax.utils import paths
from txt2img_jax.models import latents
from txt2img_jax.train import optim
from txt2img_jax.objectives import perceptual as perceptual_lib
from txt2img_jax.train import preemption
from txt2img_jax.utils import reporting
from txt2img_jax.utils import runlock
from txt2img_jax.utils.errors import UserError
from txt2img_jax.train import sharding
from txt2img_jax.train import step as step_lib

# ---------------------------------------------------------------------------
# train_and_evaluate
# ---------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from workdir if it holds a checkpoint); returns the
  final train metrics and the last evaluation."""
  # --- Logging and checks (before anything compiles).
  validate.use_prng_impl(config)  # Process-wide: before any key is made.
  latent_shape = validate.validate_config(config)
  if warning := optim.unfinished_schedule(config):
    logging.warning("optim.schedule: %s", warning)
  workdir = checkpoint_files.workdir_path(workdir)
  paths.makedirs(workdir)
  is_main = jax.process_index() == 0
  # One writer per run: a second process on this workdir stops here, before
  # writing anything (process 0 holds the lock for every host).
  with runlock.RunLock(workdir) if is_main else contextlib.nullcontext():
    return _train(config, workdir, latent_shape)


def _train(config, workdir: str, latent_shape) -> dict:
  is_main = jax.process_index() == 0
  # A resume that changes what the run is stops here, before any write.
  previous = (
      assets.load_config(workdir)
      if checkpoint_files.step_dirs(paths.join(workdir, "checkpoints"))[0]
      and paths.exists(paths.join(workdir, assets.CONFIG_FILE))
      else None
  )
  changed = changes.check_resume(config, previous) if previous else {}
  writer = metric_writers.create_default_writer(
      paths.native(workdir), just_logging=not is_main, asynchronous=True
  )
  writer.write_hparams(assets.flat_hparams(config))

  # --- Mesh.
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
  rules = sharding.logical_rules(config.mesh.rules, config.mesh.preset)
  logging.info(
      "mesh %s over %d devices (%s)",
      dict(mesh.shape),
      jax.device_count(),
      jax.devices()[0].platform,
  )

  # --- Input: data, tokenizer and text side, latent space and statistics.
  autoencoder = latents.build(config)
  data = assets.prepare_data(config, autoencoder)  # On every host.
  parts = run_lib.build_parts(config, workdir, data, autoencoder, latent_shape)
  text, autoencoder, model = parts.text, parts.autoencoder, parts.model
  stats = assets.latent_stats(config, workdir, data, autoencoder)

  # --- Model, optimiser and sharded init (shapes first, then each array
  # is created where it lives).
  tx, schedules, state, state_shardings = state_lib.create_train_state(
      config, model, latent_shape, text.width, mesh, rules
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
  # Written once the checkpoint is known to fit: a resume with a config of
  # another model fails above and leaves the run's own config.json (and a
  # changed one is kept in config_history.jsonl first).
  previous = previous if resumed else None
  start_example = changes.input_start(workdir, config, previous, start_step)
  changes.record(workdir, previous, changed if resumed else {}, start_step)
  assets.save_config(config, workdir, latent_shape)

  # --- The jitted train step: donated state, explicit shardings.
  perceptual = (
      perceptual_lib.load(config.loss.lpips_net)
      if config.loss.lpips_weight > 0
      else None
  )
  frozen = jax.device_put(
      dict(parts.frozen, lpips=perceptual.params if perceptual else {}),
      sharding.replicated(mesh),
  )
  stats_dev = jax.device_put(stats, sharding.replicated(mesh))
  p_train_step = state_lib.jit_train_step(
      step_lib.for_parts(config, parts, tx, schedules, perceptual),
      state_shardings,
      mesh,
      validate.train_compiler_options(config),
      rules,
  )

  # --- Evaluators: sample grid and structure benchmark (EMA params).
  generate = run_lib.make_generate_fn(config, model, autoencoder, text.frozen)
  evaluator = evaluators.make_evaluator(
      config, workdir, data, parts, generate, frozen, stats_dev, writer
  )

  # --- Loop.
  total = config.total_steps
  batches = assets.train_batches(
      config, data, text, start_step, start_example=start_example
  )
  reporter = reporting.Reporter(config, workdir, writer, start_step, total)
  hooks = reporting.Periodic(config, total)
  pending = None  # Metrics are fetched one step late: logging never stalls.
  last_eval = {}
  with mesh, preemption.StopOnSignal() as stop:
    for step in range(start_step, total):
      batch = hostmem.inputs_ready(sharding.put_batch(next(batches), mesh))
      state, metrics = p_train_step(state, batch, frozen, stats_dev)
      if pending is not None:
        reporter.add(*pending)
      pending = (step + 1, metrics)
      done = step + 1
      stopping = stop.requested(done)  # SIGTERM / SIGINT / preemption.
      # A state is checked (its metrics fetched) before it is saved.
      if hooks.log(done) or done == total or hooks.checkpoint(done) or stopping:
        reporter.add(*pending)
        pending = None
      if reporter.failure:  # Runaway updates: keep the last good checkpoint.
        reporter.flush(done)
        ckpt.close()
        writer.flush()
        raise reporting.RunawayError(
            f"run stopped: {reporter.failure}. {ckpt.describe_latest()}"
        )
      if hooks.log(done) or done == total:
        reporter.flush(done)
      if hooks.checkpoint(done) or stopping:
        ckpt.save(done, state)
      if hooks.sample(done) or hooks.eval(done):
        with _evaluation(done, ckpt, state):
          if hooks.sample(done):
            evaluator.sample_grid(state.ema_params, done)
          if hooks.eval(done):
            last_eval = evaluator.evaluate(state.ema_params, done)
      if stopping:
        reporter.save_partial(done)
        ckpt.wait()
        stop.report(done, ckpt.directory)
        break
      reporting.check_compiles(p_train_step, config.max_compiles)
  if pending is not None:
    reporter.add(*pending)
    reporter.flush(total)
  if ckpt.latest_step() != total and int(state.step) == total:
    ckpt.save(total, state)
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


class EvaluationError(UserError):
  """A sample grid or evaluation failed; the run's state is saved."""


@contextlib.contextmanager
def _evaluation(step: int, ckpt, state):
  """A failing grid or evaluation never costs training: the step's state is
  saved (and committed) first, then the error ends the run in one line
  (`--debug` shows its traceback)."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    ckpt.save(step, state)
    ckpt.close()
    text = " ".join(str(e).split())[:300] or type(e).__name__
    raise EvaluationError(
        f"the sample grid / evaluation at step {step} failed "
        f"({type(e).__name__}: {text}); training is saved - "
        f"{ckpt.describe_latest()}. Fix the sample/eval settings and run the "
        "same command again to resume"
    ) from e
