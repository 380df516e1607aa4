"""Analytic model FLOPs of the denoiser (STUNet or the per-frame T2I U-Net) from its config.

Counted: every convolution, dense projection and attention einsum (q.k and weights.v), a
multiply-add being 2 FLOPs. Not counted: normalisation, activations, softmax, bias and
residual adds (elementwise work, a few percent of the total), the text encoder (it runs
once per prompt, outside the denoiser), and rematerialisation (these are model FLOPs, the
work the model needs, not the work a remat policy makes the hardware redo).

Convolutions count only the taps that land inside the input, not the zero padding. That is
XLA's convention (HloCostAnalysis), so this count and `compiled.cost_analysis()['flops']`
measure the same matmul work; it matters at small sizes (a 3x3 conv on 8x8 has 7.6 valid
taps per pixel, not 9, and a 3-tap temporal conv on 4 frames 2.5, not 3).

Train step (forward + backward). An op with forward cost F costs F more for each of its
operands that needs a gradient:
  * its input, when the input depends on a trainable parameter (the activation gradient,
    needed to reach trainable layers further back);
  * its weight, when the weight is trainable (the weight gradient).
So a trainable layer in the middle of the network costs 3F (the usual "fwd + bwd = 3x
forward"); a frozen layer downstream of a trainable one costs 2F (activation gradient, no
weight gradient: `split_trainable` differentiates only the trainable groups, so XLA never
computes frozen weight gradients); a frozen layer that only sees inputs and frozen layers
(the backbone's conv_in and first ResNet in the t2v stage, the time-embedding MLP, the
projections of the text context) costs F; a trainable layer whose input needs no gradient
(conv_in in full training, the temporal layers' projections of the text) costs 2F.
The text context is an input of the denoiser: it needs a gradient only when the stage
trains 'text' (whose encoder, as said, is not counted).
An attention einsum has two activation operands and costs F per operand that needs one.
Normalisation layers have parameters too: a trainable norm makes its output need a
gradient even where its input does not (the entry into the temporal layers).

`traced_flops` counts the same FLOPs from the program JAX actually traces (every
dot_general and conv_general_dilated in the jaxpr, remat recomputation included): the
tests hold the analytic count equal to it, and within a few percent below XLA's
cost_analysis, whose total also has the elementwise work.
"""

import dataclasses
import math
from typing import Dict, List, Sequence

import jax
import ml_collections
from jax.extend import core as jax_core
from jax.interpreters import partial_eval
from lumiere_jax.models import layers


BACKBONE, TEMPORAL, LOCAL_FILM, FILM_POOL = "backbone", "temporal", "local_film", "film_pool"
LEVEL_ATTENTION = "level_attention"


@dataclasses.dataclass(frozen=True)
class Op:
  """One matmul-like op: its parameter group, kind ('conv', 'dense', 'attention'),
  forward FLOPs, how many of its operands need a gradient in the train step, and what its
  train-step gradients compute beyond one forward's FLOPs each (`extra_train_flops`: the
  temporal convolution's kernel gradient, one matmul over every tap)."""

  group: str
  kind: str
  flops: int
  grad_operands: int
  extra_train_flops: int = 0

  @property
  def train_flops(self) -> int:
    return self.flops * (1 + self.grad_operands) + self.extra_train_flops


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """All ops of one denoiser call on a batch; totals and per-(group, kind) breakdowns."""

  ops: tuple

  @property
  def forward(self) -> int:
    return sum(op.flops for op in self.ops)

  @property
  def train_step(self) -> int:
    return sum(op.train_flops for op in self.ops)

  def breakdown(self, train: bool = False) -> Dict[str, int]:
    """FLOPs per 'group/kind', e.g. 'temporal/attention'."""
    totals = {}
    for op in self.ops:
      key = f"{op.group}/{op.kind}"
      totals[key] = totals.get(key, 0) + (op.train_flops if train else op.flops)
    return totals


@dataclasses.dataclass(frozen=True)
class Act:
  """An activation in the frame layout: `frames` = videos x frames at this level, square
  `res` x `res` pixels, `channels`, and whether it depends on a trainable parameter."""

  frames: int
  res: int
  channels: int
  grad: bool

  @property
  def tokens(self) -> int:
    return self.frames * self.res * self.res


def valid_taps(size: int, kernel: int, stride: int = 1) -> int:
  """(output position, kernel tap) pairs of a 'same'-padded conv along one axis whose tap
  lands inside the input: the multiply-adds XLA counts per channel pair."""
  pad = kernel // 2
  outputs = (size + 2 * pad - kernel) // stride + 1
  return sum(1 for o in range(outputs) for i in range(kernel)
             if 0 <= o * stride - pad + i < size)


def temporal_kernel_grad_extra(per_tap: int, frames: int, kernel: int, stride: int,
                               trained: bool) -> int:
  """What the kernel gradient of a stride-1 temporal convolution (models/temporal.py:
  time_conv, one matmul over every tap, the zero padding's included) computes beyond the
  forward's valid taps; `per_tap` is the FLOPs of one tap at every frame. A program
  partitioned over several devices runs XLA's own gradient instead (layers.flat_matmuls)
  and computes that many FLOPs fewer than counted (0.06% of the peer-matched full train
  step, benchmarks/RESULTS.md, stop 55)."""
  if not trained or stride != 1 or kernel % 2 == 0:
    return 0
  return per_tap * (frames * kernel - valid_taps(frames, kernel, stride))


def model_flops(config: ml_collections.ConfigDict, batch: int) -> FlopCount:
  """FLOPs of the config's denoiser on `batch` videos (or images, for a 2D model), with
  the stage's `config.train.trainable` deciding the train-step gradients."""
  return FlopCount(tuple(_Walk(config, batch).run()))


class _Walk:
  """Follows models/unet2d.py:unet_forward (and the STUNet's hooks) recording every op.

  Per-video tensors (time embedding, text) have `batch` rows; frames at the current level
  are `batch * frames_per_video`, which the temporal down/up-sampling changes.
  """

  def __init__(self, config, batch: int):
    model = config.model
    self.model = model
    self.batch = batch
    self.stunet = model.kind == "stunet"
    self.frames = config.data.num_frames if self.stunet else 1
    self.resolution = config.data.resolution
    self.channels = tuple(model.block_out_channels)
    self.context_len = config.text.max_length
    # The temporal layers read one more token per caption part (model.temporal.caption_parts).
    self.temporal_context_len = self.context_len + (
        model.temporal.get("caption_parts", 0) if self.stunet else 0)
    self.context_dim = model.cross_attention_dim
    trainable = tuple(config.train.trainable)
    self.trainable = {group: group in trainable
                      for group in (BACKBONE, TEMPORAL, LOCAL_FILM, FILM_POOL, LEVEL_ATTENTION)}
    self.context_grad = "text" in trainable
    self.ops: List[Op] = []

  # -- primitive ops ---------------------------------------------------------------------

  def _record(self, group, kind, flops, *operand_grads, extra_train_flops=0):
    self.ops.append(Op(group, kind, flops, sum(bool(g) for g in operand_grads),
                       extra_train_flops))

  def conv2d(self, group, a: Act, out_channels, kernel=3, stride=1) -> Act:
    taps = valid_taps(a.res, kernel, stride)
    self._record(group, "conv", 2 * a.frames * taps * taps * a.channels * out_channels,
                 a.grad, self.trainable[group])
    res = (a.res + 2 * (kernel // 2) - kernel) // stride + 1
    return Act(a.frames, res, out_channels, a.grad or self.trainable[group])

  def temporal_conv(self, a: Act, stride=1) -> Act:
    per_video = a.frames // self.batch
    kernel = self.model.temporal.kernel_size
    per_tap = 2 * self.batch * a.res * a.res * a.channels * a.channels
    flops = per_tap * valid_taps(per_video, kernel, stride)
    self._record(TEMPORAL, "conv", flops, a.grad, self.trainable[TEMPORAL],
                 extra_train_flops=temporal_kernel_grad_extra(
                     per_tap, per_video, kernel, stride, self.trainable[TEMPORAL]))
    return Act(self.batch * (per_video // stride), a.res, a.channels,
               a.grad or self.trainable[TEMPORAL])

  def dense(self, group, rows, in_features, out_features, input_grad) -> bool:
    """Records a projection; returns whether its output needs a gradient."""
    self._record(group, "dense", 2 * rows * in_features * out_features, input_grad,
                 self.trainable[group])
    return input_grad or self.trainable[group]

  def attention(self, group, rows, queries, width, x_grad, context=False):
    """Multi-head attention of `rows` sequences of `queries` tokens of `width` channels
    (heads x head width = width), to themselves or, with `context`, to the text (keys and
    values projected once per video, as layers.Attention does)."""
    q_grad = self.dense(group, rows * queries, width, width, x_grad)
    if context:
      keys = self.context_len if group == BACKBONE else self.temporal_context_len
      kv_rows = self.batch * keys
      k_grad = self.dense(group, kv_rows, self.context_dim, width, self.context_grad)
      self.dense(group, kv_rows, self.context_dim, width, self.context_grad)
    else:
      keys = queries
      k_grad = self.dense(group, rows * queries, width, width, x_grad)
      self.dense(group, rows * queries, width, width, x_grad)
    einsum = 2 * rows * queries * keys * width
    self._record(group, "attention", einsum, q_grad, k_grad)  # q.k
    self._record(group, "attention", einsum, q_grad or k_grad, k_grad)  # weights.v
    return self.dense(group, rows * queries, width, width, q_grad or k_grad)

  def normed(self, group, a: Act) -> Act:
    """A norm's output needs a gradient when its input does or its scale and bias train."""
    return dataclasses.replace(a, grad=a.grad or self.trainable[group])

  # -- backbone blocks -------------------------------------------------------------------

  def resnet(self, a: Act, out_channels, temb_grad) -> Act:
    h = self.conv2d(BACKBONE, self.normed(BACKBONE, a), out_channels)
    t_grad = self.dense(BACKBONE, self.batch, 4 * self.channels[0], out_channels, temb_grad)
    h = dataclasses.replace(h, grad=h.grad or t_grad)
    h = self.conv2d(BACKBONE, self.normed(BACKBONE, h), out_channels)
    if a.channels != out_channels:
      shortcut = self.conv2d(BACKBONE, a, out_channels, kernel=1)
      h = dataclasses.replace(h, grad=h.grad or shortcut.grad)
    return h

  def transformer(self, a: Act) -> Act:
    c = a.channels
    h = self.conv2d(BACKBONE, self.normed(BACKBONE, a), c, kernel=1)
    tokens = h.res * h.res
    grad, norm = h.grad, self.trainable[BACKBONE]
    for _ in range(self.model.transformer_layers_per_block):
      grad |= self.attention(BACKBONE, h.frames, tokens, c, grad or norm)
      grad |= self.attention(BACKBONE, h.frames, tokens, c, grad or norm, context=True)
      ff_grad = self.dense(BACKBONE, h.tokens, c, 8 * c, grad or norm)  # GEGLU: 2 x 4c
      grad |= self.dense(BACKBONE, h.tokens, 4 * c, c, ff_grad)
    h = self.conv2d(BACKBONE, dataclasses.replace(h, grad=grad), c, kernel=1)
    return dataclasses.replace(h, grad=h.grad or a.grad)

  # -- temporal layers -------------------------------------------------------------------

  def conv_inflation(self, a: Act) -> Act:
    h = self.conv2d(TEMPORAL, self.normed(TEMPORAL, a), a.channels)
    h = self.normed(TEMPORAL, h)
    if self.model.temporal.conv_text_conditioning:  # FiLM from the pooled caption
      rows, text_grad = self.batch, self.context_grad
      if self.model.temporal.get("film_pooling", "mean") == "attention":  # pooled per position
        rows, text_grad = a.tokens, self.film_pool(a)
      film = self.dense(TEMPORAL, rows, self.context_dim, 2 * a.channels, text_grad)
      h = dataclasses.replace(h, grad=h.grad or film)
    if self.model.temporal.get("local_film", False):  # every position reads the caption
      read = self.attention(LOCAL_FILM, self.batch, a.tokens // self.batch, a.channels,
                            a.grad or self.trainable[LOCAL_FILM], context=True)
      film = self.dense(LOCAL_FILM, a.tokens, a.channels, 2 * a.channels, read)
      h = dataclasses.replace(h, grad=h.grad or film)
    h = self.temporal_conv(h)
    grad = self.dense(TEMPORAL, h.tokens, a.channels, a.channels, h.grad)
    return dataclasses.replace(a, grad=a.grad or grad)

  def film_pool(self, a: Act) -> bool:
    """temporal.FiLMPool: a query per position, a key per caption token, one softmax over
    the tokens (head-mean weights), and the weighted mean of the caption per position.
    Returns whether the pooled caption needs a gradient."""
    keys, width = self.temporal_context_len, a.channels
    q_grad = self.dense(FILM_POOL, a.tokens, width, width, a.grad or self.trainable[FILM_POOL])
    k_grad = self.dense(FILM_POOL, self.batch * keys, self.context_dim, width,
                        self.context_grad)
    self._record(FILM_POOL, "attention", 2 * a.tokens * keys * width, q_grad, k_grad)
    weights_grad = q_grad or k_grad
    self._record(FILM_POOL, "attention", 2 * a.tokens * keys * self.context_dim,
                 weights_grad, self.context_grad)
    return weights_grad or self.context_grad

  def attention_inflation(self, a: Act, group=TEMPORAL, spacetime=None, text=None) -> Act:
    """temporal.AttentionInflationBlock (the coarsest level's and the mid block's; with
    `group` LEVEL_ATTENTION, per pixel and without text, those of attention_levels)."""
    spacetime = self.model.temporal.spacetime_attention if spacetime is None else spacetime
    text = self.model.temporal.text_conditioning if text is None else text
    c, pixels = a.channels, a.res * a.res
    per_video = a.frames // self.batch
    norm = self.trainable[group]
    rows, queries = self.batch * pixels, per_video
    if spacetime:  # one sequence of every token per video
      rows, queries = self.batch, per_video * pixels
    grad = self.attention(group, rows, queries, c, a.grad or norm)
    if text:
      grad |= self.attention(group, rows, queries, c, grad or norm, context=True)
    grad = self.dense(group, a.tokens, c, c, grad)
    return dataclasses.replace(a, grad=a.grad or grad)

  def inflate(self, a: Act, level) -> Act:
    if not self.stunet:
      return a
    if level == len(self.channels) - 1:
      return self.attention_inflation(a)
    a = self.conv_inflation(a)
    if level in self.model.temporal.get("attention_levels", ()):
      a = self.attention_inflation(a, LEVEL_ATTENTION, spacetime=False, text=False)
    return a

  def resample_in_time(self, a: Act, level, up: bool) -> Act:
    if not (self.stunet and self.model.temporal.down_levels[level]):
      return a
    if up:
      return self.temporal_conv(dataclasses.replace(a, frames=2 * a.frames))
    return self.temporal_conv(a, stride=2)

  # -- the whole forward pass ------------------------------------------------------------

  def block(self, h: Act, level, out_channels, temb_grad) -> Act:
    h = self.resnet(h, out_channels, temb_grad)
    if self.model.cross_attention_levels[level]:
      h = self.transformer(h)
    return self.inflate(h, level)

  def run(self) -> Sequence[Op]:
    levels, c0 = len(self.channels), self.channels[0]
    x = Act(self.batch * self.frames, self.resolution, self.model.in_channels, False)
    h = self.conv2d(BACKBONE, x, c0)
    temb_grad = self.dense(BACKBONE, self.batch, c0, 4 * c0, False)
    temb_grad = self.dense(BACKBONE, self.batch, 4 * c0, 4 * c0, temb_grad)
    if self.model.in_channels == 6:  # SSR: the conditioning's noise level, embedded alike
      level_grad = self.dense(BACKBONE, self.batch, c0, 4 * c0, False)
      temb_grad |= self.dense(BACKBONE, self.batch, 4 * c0, 4 * c0, level_grad)
    skips = [h]
    for level, channels in enumerate(self.channels):
      for _ in range(self.model.layers_per_block):
        h = self.block(h, level, channels, temb_grad)
        skips.append(h)
      if level < levels - 1:
        h = self.resample_in_time(self.conv2d(BACKBONE, h, channels, stride=2), level, False)
        skips.append(h)
    h = self.resnet(h, self.channels[-1], temb_grad)
    h = self.transformer(h)
    if self.stunet:
      for _ in range(self.model.temporal.attention_blocks):
        h = self.attention_inflation(h)
    h = self.resnet(h, self.channels[-1], temb_grad)
    for level in reversed(range(levels)):
      for _ in range(self.model.layers_per_block + 1):
        skip = skips.pop()
        h = Act(h.frames, h.res, h.channels + skip.channels, h.grad or skip.grad)
        h = self.block(h, level, self.channels[level], temb_grad)
      if level > 0:
        h = self.conv2d(BACKBONE, dataclasses.replace(h, res=2 * h.res), h.channels)
        h = self.resample_in_time(h, level - 1, True)
    self.conv2d(BACKBONE, self.normed(BACKBONE, h), self.model.out_channels)
    return self.ops


def traced_flops(fn, *args) -> int:
  """Matmul FLOPs (convolutions and dot products, valid taps only) of `fn(*args)` as JAX
  traces it; args may be jax.ShapeDtypeStruct. Covers everything the program computes:
  the backward pass of a jax.grad, and the recomputation of a remat policy. Dead code is
  dropped first, as XLA drops it: a custom_vjp's backward traces the gradients of every
  input (models/layers.py: pointwise_conv), and those of a frozen kernel go unused."""
  jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
  live, _ = partial_eval.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
  return _jaxpr_flops(live)


def _jaxpr_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general" and not _is_selection(eqn):
      total += _dot_general_flops(eqn)
    elif eqn.primitive.name == "conv_general_dilated":
      total += _conv_flops(eqn)
    total += sum(_jaxpr_flops(sub) for sub in jax_core.jaxprs_in_params(eqn.params))
  return total


def _is_selection(eqn) -> bool:
  """A 0/1 matmul (layers.repeat_rows' derivative, GroupNorm's group sums): data movement,
  not model FLOPs."""
  return layers.SELECTION_SCOPE in str(eqn.source_info.name_stack)


def _dot_general_flops(eqn) -> int:
  lhs = eqn.invars[0].aval
  (contracting, _), _ = eqn.params["dimension_numbers"]
  reduced = math.prod(lhs.shape[d] for d in contracting)
  return 2 * math.prod(eqn.outvars[0].aval.shape) * reduced


def _conv_flops(eqn) -> int:
  """2 x output batch x output features x kernel input features x the (output position,
  tap) pairs whose tap reads a real input element (not padding, not a dilation hole)."""
  lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
  out = eqn.outvars[0].aval
  params = eqn.params
  numbers = params["dimension_numbers"]
  pairs = 1
  for d, (low, _) in enumerate(params["padding"]):
    size = lhs.shape[numbers.lhs_spec[2 + d]]
    kernel = rhs.shape[numbers.rhs_spec[2 + d]]
    stride, lhs_dilation = params["window_strides"][d], params["lhs_dilation"][d]
    rhs_dilation = params["rhs_dilation"][d]
    positions = (o * stride + i * rhs_dilation - low
                 for o in range(out.shape[numbers.out_spec[2 + d]]) for i in range(kernel))
    pairs *= sum(1 for p in positions
                 if 0 <= p <= (size - 1) * lhs_dilation and p % lhs_dilation == 0)
  return (2 * out.shape[numbers.out_spec[0]] * out.shape[numbers.out_spec[1]]
          * rhs.shape[numbers.rhs_spec[1]] * pairs)
