"""Widening a trained model's first convolution to take more input channels.

The conditional model (LUMIERE.md) is the base text-to-video model with its first
convolution widened from the noisy clip's 3 channels to <J, C, M>'s 7, then fine-tuned.
The denoiser's input puts the noisy clip first and the conditioning channels after it
(models/conditioning.py: model_input), so padding the kernel's input axis with zeros at
the end gives a model whose output is the base model's for any conditioning: the new
inputs are multiplied by zero weights until fine-tuning moves them.

Only `backbone/conv_in/kernel` depends on the input channels (the bias and every later
layer see the convolution's output channels), so it is the one leaf widened.
"""

import jax.numpy as jnp

INPUT_KERNEL = ("backbone", "conv_in", "kernel")  # [kh, kw, in_channels, out_channels]
INPUT_AXIS = 2


def can_widen(saved_shape, target_shape) -> bool:
  """Whether a first-convolution kernel of `saved_shape` widens to `target_shape`: the
  same kernel size and output channels, fewer input channels."""
  saved, target = tuple(saved_shape), tuple(target_shape)
  return (len(saved) == len(target) == 4 and saved[INPUT_AXIS] < target[INPUT_AXIS]
          and saved[:INPUT_AXIS] == target[:INPUT_AXIS]
          and saved[INPUT_AXIS + 1:] == target[INPUT_AXIS + 1:])


def widen_kernel(kernel, in_channels: int):
  """[kh, kw, c, o] -> [kh, kw, in_channels, o]: the first c input channels as given, the
  new ones zero."""
  extra = in_channels - kernel.shape[INPUT_AXIS]
  if extra < 0:
    raise ValueError(f"cannot narrow a {kernel.shape[INPUT_AXIS]}-channel input kernel "
                     f"to {in_channels} channels")
  pad = [(0, 0)] * kernel.ndim
  pad[INPUT_AXIS] = (0, extra)
  return jnp.pad(kernel, pad)


def input_kernel(params: dict):
  """The first convolution's kernel in a full parameter tree."""
  tree = params
  for key in INPUT_KERNEL:
    tree = tree[key]
  return tree


def with_input_kernel(params: dict, kernel) -> dict:
  """The tree with the first convolution's kernel replaced; every other leaf is the
  same object."""
  backbone = dict(params["backbone"])
  backbone["conv_in"] = {**backbone["conv_in"], "kernel": kernel}
  return {**params, "backbone": backbone}


def widen_params(params: dict, in_channels: int) -> dict:
  """The full tree with the first convolution widened to `in_channels` inputs (zero
  weights for the new ones)."""
  return with_input_kernel(params, widen_kernel(input_kernel(params), in_channels))
