"""Weights from another run (`config.init_from`): matched by path and shape,
a new learning-rate cycle from the old run's floor; and the converter of a
checkpoint's DiT layout (scanned or not) to this config's."""

from __future__ import annotations

from absl import logging
import jax
import numpy as np

from txt2img_jax.models import dit_params
from txt2img_jax.train import checkpoint_files
from txt2img_jax.train import checkpoint_trees
from txt2img_jax.train import optim
from txt2img_jax.train import run_config
from txt2img_jax.train.state import TrainState
from txt2img_jax.utils import paths


def init_from_other_run(
    config, state: TrainState, tx, schedules, state_shardings
):
  """Weights (and EMA) from config.init_from; a new LR cycle from step 0.

  The new cycle's peak is restart.peak_factor x each group's configured lr,
  and its floor is the lr the old run had reached (read from its config and
  step). Parameters whose path or shape differ (a swapped head) are freshly
  initialised; the table of what was loaded is logged.
  """
  raw, old_step, directory = checkpoint_files.load_raw_from(config.init_from)
  old_config = run_config.load(paths.dirname(directory))  # Its workdir.
  check_same_prediction(config, old_config)
  raw = dit_layout(config)(raw)  # The other run's DiT may be (un)scanned.
  host = jax.device_get(state)
  tx, schedules, old_lrs = optim.new_cycle(
      config, old_config, old_step, host.params, schedules
  )
  params, table = checkpoint_trees.merge_matching(host.params, raw["params"])
  ema, _ = checkpoint_trees.merge_matching(host.ema_params, raw["ema_params"])
  opt_state, opt_table = tx.init(params), None
  if config.restart.keep_opt_state:
    opt_state, opt_table = checkpoint_trees.merge_matching(
        opt_state, raw["opt_state"]
    )
  logging.info("init_from %s (step %d):", config.init_from, old_step)
  checkpoint_trees.log_merge_table(table)
  for g in schedules:
    logging.info(
        "  lr %s: old run reached %.3g; new cycle peak %.3g -> floor %.3g",
        g,
        old_lrs.get(g, float("nan")),
        float(schedules[g](0)),
        old_lrs.get(g, float("nan")),
    )
  if opt_table is not None:
    logging.info(
        "  optimizer moments kept: %d tensors (%d new)",
        len(opt_table["loaded"]),
        len(opt_table["new"]),
    )
  else:
    logging.info("  optimizer moments reset")
  new_state = host.replace(
      step=np.int32(0), params=params, ema_params=ema, opt_state=opt_state
  )
  return jax.device_put(new_state, state_shardings), tx, schedules


def check_same_prediction(config, old_config) -> None:
  """The loaded flow network must keep predicting what it learnt to: its
  weights read as a velocity would mean nothing as an image, and the other
  way round (the shapes match, so nothing else would say so)."""
  old = old_config.flow.predict  # run_config.load fills base.py's defaults.
  if old != config.flow.predict:
    raise ValueError(
        f"init_from: {config.init_from} trained its flow network to predict "
        f"the {old} (flow.predict={old!r}) and this config predicts the "
        f"{config.flow.predict}; pass --config.flow.predict={old} to keep "
        "what the loaded network predicts."
    )


def dit_layout(config):
  """The converter of a checkpoint's DiT blocks to this config's layout
  (stacked under flow.scan, else one subtree per block); both leave a tree
  already in that layout unchanged."""
  return (
      dit_params.stack_block_params
      if config.flow.scan
      else dit_params.unstack_block_params
  )
