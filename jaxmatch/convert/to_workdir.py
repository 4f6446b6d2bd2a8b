"""Writing converted weights as a jaxmatch checkpoint (what `python -m jaxmatch.convert` does)."""
from __future__ import annotations

import os


def convert_to_workdir(config, workdir: str, torch_checkpoint: str | None = None,
                       torchvision_resnet: str | None = None, allow_pickle: bool = False) -> str:
  """Converts and saves; returns the checkpoint directory."""
  import jax
  import numpy as np

  from jaxmatch import convert, models
  from jaxmatch import parallel
  from jaxmatch.train import checkpoint as ckpt
  from jaxmatch.train.state import create_state, make_optimizer

  if bool(torch_checkpoint) == bool(torchvision_resnet):
    raise ValueError("give exactly one of --torch_checkpoint or --torchvision_resnet")
  state_dict = convert.load_state_dict(torch_checkpoint, allow_pickle) if torch_checkpoint else None
  if state_dict is not None:
    convert.complete_config(config, state_dict)  # e.g. the re-ID classifier size, before the model is built
  model = models.build(config)
  expected_params, expected_state = jax.eval_shape(model.init_variables, jax.random.key(0))
  if torch_checkpoint:
    variables = convert.from_torch(config, state_dict)
    source = torch_checkpoint
  else:
    params, model_state = model.init_variables(jax.random.key(config.train.seed))
    variables = convert.imagenet_start(config, convert.load_state_dict(torchvision_resnet, allow_pickle),
                                       {"params": params, **jax.tree.map(np.asarray, model_state)})
    source = torchvision_resnet
  convert.assert_tree_matches({"params": expected_params, **expected_state}, variables)

  mesh = parallel.make_mesh()
  params = parallel.replicate_tree(variables["params"], mesh)
  model_state = parallel.replicate_tree({k: v for k, v in variables.items() if k != "params"}, mesh)
  # A fresh optimizer state does not depend on the epoch length; epoch-based schedules just need one.
  tx = make_optimizer(config.train, model.param_labels(params), steps_per_epoch=1)
  state = create_state(params, model_state, tx)
  manager = ckpt.make_manager(workdir, with_data=False)
  if manager.latest_step() is not None:
    raise ckpt.CheckpointError(f"{ckpt.checkpoint_dir(workdir)} already holds checkpoints; choose a new --workdir")
  ckpt.save(manager, 0, state, {"step": 0, "converted_from": os.path.basename(source)})
  manager.close()
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2))
  return ckpt.checkpoint_dir(workdir)
