r"""Time, memory and FLOPs per pair of each TransforMatcher attention variant (the paper's Table 3 columns).

  python benchmarks/transformatcher_variants_bench.py --config configs/transformatcher_spair.py \
      --batch_size 1 --out docs/variants.jsonl                       # paper size: 240 px, 15^4 tokens
  python benchmarks/transformatcher_variants_bench.py --config configs/transformatcher_spair.py:smoke

For every variant in --variants (additive, performer, linformer, softmax) and every measurement in --what:
* `model`: inference as the official test.py times it, the whole model (both backbones, correlation,
  match-to-match head, upsampling) plus keypoint transfer, from images;
* `head`: the match-to-match head alone (the part the variants change), from a random correlation.
Each is jitted; the numbers are the median wall time of --steps calls after one warm-up call, XLA's FLOP
count of the compiled executable (cost analysis: every operation, not only matmuls), and its memory as
XLA plans it (memory analysis: arguments + outputs + temporaries - aliased), all divided by the batch.
Vanilla softmax attention at the paper size refuses before compiling; its row records the memory its
attention matrix would need. The paper's Table 3 uses the absolute position embedding for every
architecture (--position absolute); the default position is the recipe's. One JSON line per measurement.
"""
from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxmatch import models
from jaxmatch.models.resnet import RESNET_STAGES
from jaxmatch.models.transformatcher.match2match import Match2Match
from jaxmatch.models.common import compute_dtype
from jaxmatch.models.transformatcher.variants import ATTENTIONS
from jaxmatch.models.transformatcher.vanilla import attention_matrix_bytes

_CONFIG = config_flags.DEFINE_config_file("config", "configs/transformatcher_spair.py", "Recipe.")
_VARIANTS = flags.DEFINE_list("variants", list(ATTENTIONS), "Attention variants to measure.")
_POSITION = flags.DEFINE_enum("position", None, ["rotary", "absolute", "none"],
                              "Position embedding (default: the config's).")
_WHAT = flags.DEFINE_list("what", ["head", "model"], "Measurements: head and/or model.")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Pairs per call.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed calls after the warm-up call.")
_OUT = flags.DEFINE_string("out", None, "Append JSON lines here.")


def fake_batch(batch: int, img: int, k: int = 40, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  mask = np.arange(k)[None] < rng.integers(5, k + 1, size=(batch, 1))
  return {"src_img": jnp.asarray(rng.normal(size=(batch, img, img, 3)).astype(np.float32)),
          "trg_img": jnp.asarray(rng.normal(size=(batch, img, img, 3)).astype(np.float32)),
          "src_kps": jnp.asarray(rng.uniform(0, img - 1, size=(batch, k, 2)).astype(np.float32)),
          "trg_kps": jnp.asarray(rng.uniform(0, img - 1, size=(batch, k, 2)).astype(np.float32)),
          "kp_mask": jnp.asarray(mask)}


def compiled_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def compiled_memory_bytes(compiled) -> dict:
  """XLA's plan for the executable; some backends do not report it (then the fields are absent)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - backend without memory analysis
    return {}
  if m is None:
    return {}
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return {"total": total, "temp": m.temp_size_in_bytes, "arguments": m.argument_size_in_bytes}


def time_calls(compiled, args, steps: int) -> float:
  jax.block_until_ready(compiled(*args))   # warm-up
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def measure(fn, args, batch: int, steps: int) -> dict:
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  step_s = time_calls(compiled, args, steps)
  mem = compiled_memory_bytes(compiled)
  out = {"ms_per_pair": step_s * 1e3 / batch, "ms_per_call": step_s * 1e3, "compile_s": compile_s,
         "gflops_per_pair": compiled_flops(compiled) / 1e9 / batch}
  if mem:
    out.update({"memory_gb_per_call": mem["total"] / 1e9, "temp_gb_per_call": mem["temp"] / 1e9,
                "arguments_gb": mem["arguments"] / 1e9})
  return out


def head_inputs(model_cfg, batch: int, grid: int, channels: int, dtype) -> tuple:
  head = Match2Match(width=model_cfg.width, heads=model_cfg.heads, head_dim=model_cfg.head_dim,
                     depth=model_cfg.depth, mlp_ratio=model_cfg.mlp_ratio,
                     upsample_factor=model_cfg.upsample_factor, dtype=dtype,
                     attention=model_cfg.attention, position=model_cfg.position,
                     performer_features=model_cfg.performer_features, linformer_k=model_cfg.linformer_k,
                     max_attention_bytes=model_cfg.max_attention_bytes)
  corr = jax.random.normal(jax.random.key(0), (batch, grid, grid, grid, grid, channels), jnp.float32)
  rngs = {"params": jax.random.key(1), "performer": jax.random.key(2)}
  variables = head.init(rngs, corr)

  def run(variables, corr):
    return head.apply(variables, corr, rngs={"performer": jax.random.key(3)})[1]
  return run, (variables, corr)


def model_inputs(config, batch: int) -> tuple:
  model = models.build(config)
  params, state = model.init_variables(jax.random.key(0))
  return model.predict, (params, state, fake_batch(batch, config.data.img_size))


def measure_variant(config, variant: str, what: str, batch: int, steps: int) -> dict:
  config = config.copy_and_resolve_references()
  config.model.attention = variant
  if _POSITION.value:
    config.model.position = _POSITION.value
  model = models.build(config)
  grid = model.grid // config.model.upsample_factor
  tokens = grid ** 4
  row = {"variant": variant, "what": what, "position": config.model.position, "batch": batch,
         "tokens": tokens, "img_size": config.data.img_size, "backbone": config.model.backbone_depth,
         "dtype": config.model.dtype, "device": jax.devices()[0].device_kind,
         "platform": jax.devices()[0].platform, "jax": jax.__version__}
  if variant == "performer":
    row["performer_features"] = config.model.performer_features
  if variant == "linformer":
    row["linformer_k"] = config.model.linformer_k
  try:
    if what == "head":
      channels = correlation_channels(config.model)
      fn, args = head_inputs(config.model, batch, grid, channels, compute_dtype(config.model.dtype))
    else:
      fn, args = model_inputs(config, batch)
    row.update(measure(fn, args, batch, steps))
  except MemoryError as e:
    row["refused"] = str(e)
    row["attention_matrix_gb_per_pair"] = attention_matrix_bytes(1, config.model.heads, tokens) / 1e9
  return row


def correlation_channels(model_cfg) -> int:
  """The head's input channels: one per bottleneck block of the tapped stages, or 1 (single-channel)."""
  if model_cfg.correlation != "multi":
    return 1
  stages = RESNET_STAGES[model_cfg.backbone_depth]
  return sum(stages[s - 1] for s in model_cfg.tap_stages)


def main(argv):
  del argv
  config = _CONFIG.value
  config.model.dtype = _DTYPE.value
  for what in _WHAT.value:
    if what not in ("head", "model"):
      raise ValueError(f"--what takes head and/or model, got {what!r}")
  for variant in _VARIANTS.value:
    for what in _WHAT.value:
      line = json.dumps(measure_variant(config, variant, what, _BATCH.value, _STEPS.value))
      print(line, flush=True)
      if _OUT.value:
        with open(_OUT.value, "a", encoding="utf-8") as f:
          f.write(line + "\n")


if __name__ == "__main__":
  app.run(main)
