"""Evaluators, by `config.eval.kind`: one registry line each.

An evaluator has `sample_grid(params, step)` and `evaluate(params, step)
-> dict of metrics`; the loop calls them at `sample_every` and `eval_every`.
By default a run gets its data's own: the structure benchmark for the shapes
set (`evaluate.py`), prompts + validation loss for a user's data
(`evaluate_prompts.py`).
"""

# The evaluators import the input pipeline: loaded when one is made, so
# that checking a config (`validate`) stays light (sample, perf).


def _structure(config, workdir, data, parts, generate, frozen, stats, writer):
  from txt2img_jax.evaluation import structure

  return structure.Evaluator(
      config, workdir, data, parts.text, generate, frozen, stats, writer
  )


def _prompts(*args):
  from txt2img_jax.evaluation import prompts

  return prompts.PromptEvaluator(*args)


REGISTRY = {
    "structure": _structure,
    "prompts": _prompts,
}


def make_evaluator(
    config, workdir, data, parts, generate, frozen, stats, writer=None
):
  kind = config.eval.kind or getattr(data, "DEFAULT_EVALUATOR", "structure")
  if kind not in REGISTRY:
    raise ValueError(f"eval.kind={kind!r}: expected one of {sorted(REGISTRY)}")
  return REGISTRY[kind](
      config, workdir, data, parts, generate, frozen, stats, writer
  )
