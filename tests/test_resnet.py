"""ResNet backbone vs torchvision in the same process: eval outputs, train-mode BN updates and gradients,
checkpoint mismatch errors, torchvision initialisation, and TorchBatchNorm (bf16, sharded global batch)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxmatch.convert.keys import CheckpointMismatchError, KeyAccountant
from jaxmatch.convert.resnet import load_torchvision_resnet, resnet_from_torch, resnet_to_torch
from jaxmatch.models.layers import TorchBatchNorm
from jaxmatch.models.resnet import ResNet, resnet

from conftest import optional_import

torch = optional_import("torch")
torchvision = optional_import("torchvision")

RTOL = 1e-5  # float32: max |diff| relative to max |reference|
# Train mode: BN over few values per channel (8 in layer4 here) amplifies float32 rounding; torch float32
# itself is 1.2e-5 away from torch float64 on this test's gradients (jax float32: 1.1e-5).
RTOL_TRAIN = 3e-5
TINY_STAGES = (1, 1, 1, 1)


def assert_rel_close(got, ref, name, rtol=RTOL):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  assert got.shape == ref.shape, f"{name}: shape {got.shape} vs {ref.shape}"
  err = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)
  assert err < rtol, f"{name}: relative error {err:.3g} >= {rtol}"


def randomize_bn(model, seed=0):
  """Non-trivial BN (running stats, affine) so that a wrong mapping cannot hide."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
        m.weight.copy_(torch.rand(c, generator=g) + 0.5)
        m.bias.copy_(torch.randn(c, generator=g) * 0.1)
  return model


def torch_block_outputs(model, x, stages=("layer3", "layer4")):
  """Runs the torchvision model and records every bottleneck output of `stages`."""
  taps, hooks = {}, []
  for s in stages:
    for i, block in enumerate(getattr(model, s)):
      hooks.append(block.register_forward_hook(
          lambda mod, inp, out, key=(s, i): taps.__setitem__(key, out.detach().numpy())))
  logits = model(x)
  for h in hooks:
    h.remove()
  return logits, taps


def nhwc(x):
  return jnp.asarray(np.transpose(x.numpy(), (0, 2, 3, 1)))


def nchw(x):
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def torch_input(shape, seed=1):
  return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def compare_eval(tv_model, model, variables, x):
  with torch.no_grad():
    ref_logits, ref_taps = torch_block_outputs(tv_model.eval(), x)
  out = jax.jit(model.apply)(variables, nhwc(x))
  for (s, i), ref in ref_taps.items():
    assert_rel_close(nchw(out["blocks"][int(s[-1]) - 1][i]), ref, f"{s}.{i}")
  assert_rel_close(out["logits"], ref_logits.detach().numpy(), "logits")


@pytest.mark.parity
def test_resnet101_eval_matches_torchvision():
  torch.manual_seed(0)
  tv = randomize_bn(torchvision.models.resnet101())
  variables = load_torchvision_resnet(tv.state_dict(), 101)
  compare_eval(tv, resnet(101, num_classes=1000), variables, torch_input((2, 3, 64, 64)))


@pytest.mark.parity
def test_resnet50_last_stride_1_matches_torchvision():
  torch.manual_seed(1)
  tv = randomize_bn(torchvision.models.resnet50(), seed=1)
  tv.layer4[0].conv2.stride = (1, 1)
  tv.layer4[0].downsample[0].stride = (1, 1)
  variables = load_torchvision_resnet(tv.state_dict(), 50)
  model = resnet(50, last_stride=1, num_classes=1000)
  x = torch_input((2, 3, 64, 64), seed=2)
  compare_eval(tv, model, variables, x)
  out = model.apply(variables, nhwc(x))
  assert out["blocks"][3][0].shape == (2, 4, 4, 2048)  # layer4 keeps layer3's 4x4 grid


def tiny_torchvision(seed):
  torch.manual_seed(seed)
  tv = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, list(TINY_STAGES))
  return randomize_bn(tv, seed)


def convert_tiny(tv):
  acc = KeyAccountant({k: v.numpy() for k, v in tv.state_dict().items()}, "tiny resnet")
  variables = resnet_from_torch(acc, TINY_STAGES, include_fc=True)
  acc.ignore_matching(lambda k: k.endswith("num_batches_tracked"), "not used with momentum 0.1")
  acc.finish()
  return variables


@pytest.mark.parity
def test_train_mode_matches_torch_outputs_running_stats_and_grads():
  tv = tiny_torchvision(3).train()
  variables = convert_tiny(tv)
  x = torch_input((2, 3, 64, 64), seed=4)  # layer4 sees 2x2x2 = 8 values per channel
  weights = torch_input((2, 1000), seed=5)
  logits, taps = torch_block_outputs(tv, x, ("layer1", "layer2", "layer3", "layer4"))
  (logits * weights).sum().backward()
  ref_sd = {k: v.detach().numpy() for k, v in tv.state_dict().items()}
  ref_grads = {k: p.grad.numpy() for k, p in tv.named_parameters()}

  model = ResNet(TINY_STAGES, num_classes=1000)

  def loss_fn(params):
    out, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, nhwc(x),
                               train=True, mutable=["batch_stats"])
    return jnp.sum(out["logits"] * jnp.asarray(weights.numpy())), (out, updates)

  (_, (out, updates)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
  assert_rel_close(out["logits"], logits.detach().numpy(), "train logits", RTOL_TRAIN)
  for (s, i), ref in taps.items():
    assert_rel_close(nchw(out["blocks"][int(s[-1]) - 1][i]), ref, f"train {s}.{i}", RTOL_TRAIN)
  stats = resnet_to_torch(updates, TINY_STAGES)
  assert len(stats) == 2 * 17  # running_mean + running_var of all 17 BNs
  for key, value in stats.items():
    assert_rel_close(value, ref_sd[key], f"updated {key}")
  got_grads = resnet_to_torch({"params": grads}, TINY_STAGES)
  assert set(got_grads) == set(ref_grads)
  for key, ref in ref_grads.items():
    assert_rel_close(got_grads[key], ref, f"grad {key}", RTOL_TRAIN)


def test_mismatched_state_dict_names_every_bad_key():
  sd = {k: v.numpy() for k, v in torchvision.models.resnet50().state_dict().items()}
  del sd["layer2.0.conv1.weight"]
  sd["layer3.1.bn2.running_var"] = np.ones((7,), np.float32)
  sd["extra.weight"] = np.zeros((3,), np.float32)
  with pytest.raises(CheckpointMismatchError) as info:
    load_torchvision_resnet(sd, 50)
  message = str(info.value)
  for key in ("layer2.0.conv1.weight", "layer3.1.bn2.running_var", "extra.weight"):
    assert key in message
  assert "missing (1)" in message and "unexpected (1)" in message and "wrong shape (1)" in message


def test_fc_can_be_left_out():
  sd = {k: v.numpy() for k, v in tiny_torchvision(0).state_dict().items()}
  sd_50 = {k: v.numpy() for k, v in torchvision.models.resnet50().state_dict().items()}
  variables = load_torchvision_resnet(sd_50, 50, include_fc=False)
  assert "fc" not in variables["params"] and "layer4_2" in variables["params"]
  with pytest.raises(CheckpointMismatchError, match="layer1.1.conv1.weight"):
    load_torchvision_resnet(sd, 50)  # a 1-block-per-stage checkpoint is not a resnet50


def test_init_follows_torchvision():
  model = ResNet(TINY_STAGES, num_classes=1000)  # enough bias values to reach the bound
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  params = variables["params"]
  kernel = np.asarray(params["layer3_0"]["conv2"]["kernel"])  # 3x3, 256 -> 256
  np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (9 * 256)), rtol=0.02)  # kaiming fan_out
  assert np.abs(kernel).max() > 3.5 * kernel.std()  # untruncated normal
  bound = 1.0 / np.sqrt(2048)  # torch.nn.Linear default
  for leaf in (params["fc"]["kernel"], params["fc"]["bias"]):
    assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.9 * bound
  bn = params["layer2_0"]["bn3"]
  assert np.all(bn["scale"] == 1) and np.all(bn["bias"] == 0)
  stats = variables["batch_stats"]["stem"]["bn1"]
  assert np.all(stats["mean"] == 0) and np.all(stats["var"] == 1)


def test_bfloat16_compute_keeps_float32_params_and_statistics():
  variables = convert_tiny(tiny_torchvision(6))  # converted weights: no slow init compile
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  logits = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model = ResNet(TINY_STAGES, num_classes=1000, dtype=dtype)
    out, updates = jax.jit(lambda v, x, m=model: m.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x)
    assert out["logits"].dtype == dtype and out["blocks"][3][0].dtype == dtype
    for leaf in jax.tree.leaves(updates):
      assert leaf.dtype == jnp.float32
    # Accuracy in eval mode: train-mode BN over 2 values per channel (layer4 here) is ill-conditioned.
    logits[dtype] = jax.jit(model.apply)(variables, x)["logits"]
  assert_rel_close(logits[jnp.bfloat16], logits[jnp.float32], "bf16 logits", rtol=0.05)


def test_num_classes_needs_all_stages():
  with pytest.raises(ValueError, match="4 stages"):
    ResNet((3, 4, 6, 3), num_stages=3, num_classes=10).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


def bn_reference(x, momentum=0.1, eps=1e-5):
  """float64 torch-style BN train step from mean 0 / var 1 running stats."""
  x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
  mean, var = x.mean(0), x.var(0)
  n = x.shape[0]
  return (x - mean) / np.sqrt(var + eps), 0.1 * mean, 0.9 + momentum * var * n / (n - 1)


def test_batchnorm_bf16_keeps_float32_statistics():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 5, 8)) * 3 + 10
  bn = TorchBatchNorm(dtype=jnp.bfloat16)
  variables = bn.init(jax.random.PRNGKey(1), x.astype(jnp.bfloat16))
  y, updates = bn.apply(variables, x.astype(jnp.bfloat16), train=True, mutable=["batch_stats"])
  assert y.dtype == jnp.bfloat16
  stats = updates["batch_stats"]
  assert stats["mean"].dtype == jnp.float32 and stats["var"].dtype == jnp.float32
  _, mean, var = bn_reference(x.astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(stats["mean"], mean, rtol=1e-5)
  np.testing.assert_allclose(stats["var"], var, rtol=1e-5)


def test_batchnorm_statistics_are_global_under_sharded_jit():
  mesh = Mesh(np.array(jax.devices()), ("data",))
  x = jax.random.normal(jax.random.PRNGKey(0), (len(jax.devices()) * 2, 3, 3, 4))
  x = x + jnp.arange(x.shape[0])[:, None, None, None]  # shards differ: local stats would be wrong
  bn = TorchBatchNorm()
  variables = bn.init(jax.random.PRNGKey(1), x)
  step = jax.jit(lambda v, x: bn.apply(v, x, train=True, mutable=["batch_stats"]))
  y, updates = step(variables, jax.device_put(x, NamedSharding(mesh, P("data"))))
  y_ref, mean, var = bn_reference(x)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(updates["batch_stats"]["var"], var, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(y).reshape(y_ref.shape), y_ref, atol=1e-5)
