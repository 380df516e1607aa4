"""The cross-attention grounding loss (train/grounding.py): its targets from the caption and
the clean clip, its closed forms, the captured maps, and its place in the training loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
import pytest

import trained_weights
from lumiere_jax.config import load_config
from lumiere_jax.data import pipeline, shapes
from lumiere_jax.diffusion import denoisers
from lumiere_jax.errors import ConfigError
from lumiere_jax.models import build
from lumiere_jax.train import grounding
from lumiere_jax.train.loss import make_loss_fn

TWO = "a red circle moving left and a blue square moving up"


@functools.lru_cache(maxsize=None)
def _model(*overrides):
  # 8 frames (16 -> 8 -> 4 -> 2 in the STUNet's levels) keep the compilations short.
  config = load_config("shapes_tiny:t2v", ["model.temporal.spacetime_attention=True",
                                           "data.num_frames=8", *overrides])
  params = jax.jit(lambda r: build.init_params(config, r))(jax.random.key(0))
  # Trained-like weights: the zero-initialised projections would hide the temporal path.
  return config, build.Model(config), trained_weights.perturbed(jax.device_get(params), 3)


def _tables(model):
  return grounding.vocabulary_tables(model.tokenizer)


def test_each_word_belongs_to_its_objects_part_and_names_its_colour():
  _, model, _ = _model()
  tables = _tables(model)
  tokens = jnp.asarray(model.tokenize([TWO, "a green triangle growing", ""]))
  parts, two = grounding.token_parts(tokens, tables.split_id)
  words = len(TWO.split())
  # BOS, five words of the first part, "and", five of the second, EOS, then PAD.
  np.testing.assert_array_equal(parts[0, :words + 2],
                                [-1, 0, 0, 0, 0, 0, -1, 1, 1, 1, 1, 1, -1])
  assert (np.asarray(parts[0, words + 2:]) == -1).all()
  np.testing.assert_array_equal(two, [True, False, False])
  # Roles: "a" none, then colour, shape, and the motion's two words.
  np.testing.assert_array_equal(tables.role[np.asarray(tokens[0, 1:words + 1])],
                                [-1, 0, 1, 2, 2, -1, -1, 0, 1, 2, 2])
  colours, named = grounding.part_colours(tokens, parts, tables.colour, tables.has_colour)
  rgb = lambda name: np.asarray(shapes.COLOURS[name], np.float32) / 127.5 - 1
  np.testing.assert_allclose(colours[0], [rgb("red"), rgb("blue")], atol=1e-6)
  np.testing.assert_allclose(colours[1, 0], rgb("green"), atol=1e-6)
  np.testing.assert_array_equal(named, [[True, True], [True, False], [False, False]])


def test_object_masks_find_each_object_where_the_renderer_moved_it():
  """On rendered two-object clips: the two masks never overlap, each object is found in
  every frame, and a "moving left/right/up/down" mask's centroid moves that way."""
  _, model, _ = _model()
  tables = _tables(model)
  direction = {m: np.asarray(v) for m, v in shapes.LINEAR_MOTIONS.items()}
  checked = 0
  for seed in range(24):
    clip = shapes.render_clip(seed, two_object_fraction=1.0)
    tokens = jnp.asarray(model.tokenize([clip.caption]))
    parts, _ = grounding.token_parts(tokens, tables.split_id)
    colours, _ = grounding.part_colours(tokens, parts, tables.colour, tables.has_colour)
    masks = np.asarray(grounding.object_masks(pipeline.to_model_range(clip.video)[None],
                                              colours))[0]
    assert not (masks[0] * masks[1]).any()
    assert (masks.sum(axis=(2, 3)) > 0).all(), clip.caption
    for k, track in enumerate(clip.tracks):
      if track.motion in direction:
        ys, xs = np.mgrid[:masks.shape[2], :masks.shape[3]]
        centre = lambda m: np.array([(m * xs).sum(), (m * ys).sum()]) / m.sum()
        moved = centre(masks[k, -1]) - centre(masks[k, 0])
        assert moved @ direction[track.motion] > 2.0, (clip.caption, k, moved)
        checked += 1
  assert checked >= 6


def _two_squares(frames=4, size=8):
  """A clean clip [1, T, S, S, 3] in [-1, 1]: red in the left half's top rows, blue in the
  right half's bottom rows, black elsewhere."""
  x = -np.ones((1, frames, size, size, 3), np.float32)
  red = np.asarray(shapes.COLOURS["red"], np.float32) / 127.5 - 1
  blue = np.asarray(shapes.COLOURS["blue"], np.float32) / 127.5 - 1
  x[:, :, :size // 2, :size // 2] = red
  x[:, :, size // 2:, size // 2:] = blue
  return jnp.asarray(x)


@pytest.mark.parametrize("reads, roles, expected", [
    ("own", grounding.ROLES, 0.0), ("other", grounding.ROLES, 1.0),
    ("bos", grounding.ROLES, 0.5), ("uniform", grounding.ROLES, 0.5),
    ("own colour", grounding.ROLES, 1 / 3), ("own colour", ("colour",), 0.0),
    ("own colour", ("motion",), 0.5), ("own", ("motion",), 0.0)])
def test_leak_is_the_other_objects_share_of_each_roles_words_read(reads, roles, expected):
  """Reading only its own object's words scores 0, only the other's 1; reading neither
  (BOS only) or both alike scores 1/2: a position cannot lower the loss by reading no
  object's words. Per role: reading its own colour word alone leaves the shape and the
  motion at 1/2 each."""
  _, model, _ = _model()
  tables = _tables(model)
  tokens = jnp.asarray(model.tokenize([TWO]))
  parts = np.asarray(grounding.token_parts(tokens, tables.split_id)[0])[0]
  colour_word = tables.has_colour[np.asarray(tokens[0])]
  x0 = _two_squares()
  length = tokens.shape[1]
  grid = (2, 4, 4)
  rows = np.zeros(grid + (length,), np.float32)
  colours, _ = grounding.part_colours(tokens, jnp.asarray(parts[None]), tables.colour,
                                      tables.has_colour)
  occupancy = np.asarray(grounding.pool_to(grounding.object_masks(x0, colours), grid))[0]
  for k in (0, 1):
    where = occupancy[k] > 0
    if reads == "own":
      rows[where] = (parts == k) / (parts == k).sum()
    elif reads == "other":
      rows[where] = (parts == 1 - k) / (parts == 1 - k).sum()
    elif reads == "own colour":
      rows[where] = (parts == k) & colour_word
  if reads == "bos":
    rows[..., 1:] = 0
    rows[..., 0] = 1
  if reads == "uniform":
    rows[:] = 1 / length
  leak, weight = grounding.leak([jnp.asarray(rows[None])], tokens, x0, tables, roles)
  # A role's share moves from 0 or 1 by at most 2 eps / (what it reads of the role's words):
  # reading its part's five words alike, a position reads at least 1/5 of each role.
  np.testing.assert_allclose(leak, [expected], atol=2 * grounding.EPSILON * 5)
  np.testing.assert_array_equal(weight, [1.0])


@pytest.mark.parametrize("dropped", [(), ("circle", "square", "triangle")])
@pytest.mark.parametrize("reads, expected", [
    ("own part", 0.0), ("other part", 1.0), ("caption", 0.5), ("both parts", 0.5)])
def test_on_maps_over_part_tokens_the_leak_is_the_other_part_tokens_share(reads, expected,
                                                                           dropped):
  """caption_parts = 2: the ids are the caption and its two parts side by side, each part
  names its object's colour, and a map over the caption and the two part tokens scores
  the other part token's share of what each object reads of the two: 0 reading its own
  only, 1 the other's, 1/2 neither (the caption's words only) or both alike. A map over
  the caption alone (the backbone's) keeps the caption words' share. With the shape
  words dropped from the temporal layers' caption (a view between the caption and the
  parts, which are cut from it), the same."""
  config = load_config("shapes_tiny:t2v", ["model.temporal.caption_parts=2",
                                           f"model.temporal.caption_drop_words={dropped!r}"])
  tokenizer = build.tokenizer(config)
  tables = grounding.vocabulary_tables(tokenizer)
  assert (tables.parts, tables.dropped) == (2, int(bool(dropped)))
  prompts = [TWO, "a green triangle growing"]
  tokens = jnp.asarray(tokenizer.encode(prompts))
  caption, parts, ids, view_parts, two = grounding.caption_and_parts(tokens, tables)
  length = caption.shape[1]
  assert tokens.shape[1] == (3 + bool(dropped)) * length
  # The caption view is the one-view ids, cut into parts at "and" as without the option;
  # the part views are those of the temporal layers' caption.
  np.testing.assert_array_equal(caption, tokenizer.base.encode(prompts))
  first = "a red moving left" if dropped else "a red circle moving left"
  np.testing.assert_array_equal(ids[:1, :length], tokenizer.base.encode([first]))
  np.testing.assert_array_equal(parts[0, 1:6], [0] * 5)
  np.testing.assert_array_equal(parts[0, 7:12], [1] * 5)
  np.testing.assert_array_equal(two, [True, False])
  colours, named = grounding.part_colours(ids, view_parts, tables.colour, tables.has_colour)
  rgb = lambda name: np.asarray(shapes.COLOURS[name], np.float32) / 127.5 - 1
  np.testing.assert_allclose(colours[0], [rgb("red"), rgb("blue")], atol=1e-6)
  np.testing.assert_array_equal(named, [[True, True], [True, False]])

  x0 = jnp.concatenate([_two_squares()] * 2)
  grid = (2, 4, 4)
  occupancy = np.asarray(grounding.pool_to(grounding.object_masks(x0, colours), grid))[0]
  rows = np.zeros((2,) + grid + (length + 2,), np.float32)
  rows[..., 1] = 1.0  # everything reads the caption's first word, then each case:
  caption_rows = np.zeros((2,) + grid + (length,), np.float32)
  for k in (0, 1):
    where = occupancy[k] > 0
    if reads != "caption":
      rows[0][where] = 0.0
      rows[0][where, length:] = {"own part": np.eye(2)[k], "other part": np.eye(2)[1 - k],
                                 "both parts": [0.5, 0.5]}[reads]
    caption_rows[0][where] = np.asarray(parts[0] == 1 - k, np.float32) / 5
  leak, weight = grounding.leak([jnp.asarray(rows)], tokens, x0, tables)
  np.testing.assert_allclose(leak[0], expected, atol=2 * grounding.EPSILON)
  np.testing.assert_array_equal(weight, [1.0, 0.0])
  both, _ = grounding.leak([jnp.asarray(rows), jnp.asarray(caption_rows)], tokens, x0, tables)
  np.testing.assert_allclose(both[0], (expected + 1.0) / 2, atol=2 * grounding.EPSILON * 5)


def test_one_object_and_dropped_prompts_weigh_nothing():
  _, model, _ = _model()
  tables = _tables(model)
  tokens = jnp.asarray(model.tokenize(["a red circle moving left", ""]))
  x0 = jnp.concatenate([_two_squares()] * 2)
  maps = [jnp.full((2, 2, 4, 4, tokens.shape[1]), 1.0 / tokens.shape[1])]
  _, weight = grounding.leak(maps, tokens, x0, tables)
  np.testing.assert_array_equal(weight, [0.0, 0.0])
  loss, metrics = grounding.grounding_loss(maps, tokens, x0, jnp.zeros(2), tables, 1.0)
  assert float(loss) == 0.0 and float(metrics["grounding_examples"]) == 0.0


def test_captured_maps_are_every_cross_attention_and_change_nothing():
  config, model, params = _model()
  tokens = jnp.asarray(model.tokenize([TWO, "a green triangle growing"]))
  cond = model.encode(params["text"], tokens)
  x = jax.random.normal(jax.random.key(1), (2,) + model.clip_shape)
  t = jnp.array([0.3, 0.9])
  out, maps = jax.jit(model.denoise_capturing)(params, x, t, cond)
  np.testing.assert_array_equal(out, jax.jit(model.denoise)(params, x, t, cond))
  frames, res = config.data.num_frames, config.data.resolution
  # Cross-attention at the two coarser levels of the backbone (frames halved per level)
  # and the coarsest level's space-time attention.
  grids = {(frames // 2, res // 2, res // 2), (frames // 4, res // 4, res // 4)}
  assert {a.shape[1:4] for a in maps} == grids and len(maps) >= 4
  for a in maps:
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
    assert a.shape[-1] == tokens.shape[1]


def test_groups_keep_the_maps_sown_under_those_top_level_groups_in_module_order():
  class Sower(nn.Module):
    @nn.compact
    def __call__(self, x):
      self.sow("intermediates", "cross_attention", x)
      return x

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, t, emb, mask, level):
      for name, scale in (("temporal", 1.0), ("backbone", 2.0), ("film_pool", 3.0),
                          ("backbone_2", 4.0)):
        Sower(name=name)(x * scale)
      return x

  fn = denoisers.capturing_text_denoiser(Net())
  cond = {"emb": None, "mask": None}
  x = jnp.ones((1, 2))
  scales = lambda groups: [float(m[0, 0]) for m in fn({}, x, 0.0, cond, groups)[1]]
  assert scales(None) == [2.0, 4.0, 3.0, 1.0]  # sorted by group, as tree_leaves lists them
  assert scales(("film_pool", "backbone")) == [2.0, 3.0]
  assert scales(("temporal",)) == [1.0]


def test_the_training_loss_adds_the_weighted_leak_and_its_gradient_lowers_it():
  """The t2v loss with grounding is the loss without it plus weight * leak (same rng:
  same t, noise and dropout), and a small step of the denoiser down the leak's gradient
  lowers it (one compiled function gives the loss, the leak and its gradient)."""
  weight = 0.5
  config, model, params = _model(f"train.grounding_weight={weight}", "data.batch_size=2")
  plain_config, _, _ = _model("data.batch_size=2")
  clips = [shapes.render_clip(s, num_frames=8, two_object_fraction=1.0) for s in (0, 1)]
  batch = {"video": jnp.asarray(np.stack([c.video for c in clips])),
           "tokens": jnp.asarray(model.tokenize([c.caption for c in clips]))}
  rng = jax.random.key(4)
  loss_fn = make_loss_fn(config)

  def leak_of(denoiser):
    loss, metrics = loss_fn({**params, **denoiser}, batch, rng)
    return metrics["grounding_leak"], (loss, metrics)

  leak_and_grad = jax.jit(jax.value_and_grad(leak_of, has_aux=True))
  denoiser = build.denoiser_params(params)
  (before, (loss, metrics)), grads = leak_and_grad(denoiser)
  plain, _ = jax.jit(make_loss_fn(plain_config))(params, batch, rng)
  assert float(metrics["grounding_examples"]) >= 1
  np.testing.assert_allclose(loss - plain, weight * before, rtol=1e-5)

  norm = float(optax.tree.norm(grads))
  assert norm > 0
  stepped = jax.tree_util.tree_map(lambda p, g: p - 1e-2 * g / norm, denoiser, grads)
  (after, _), _ = leak_and_grad(stepped)
  assert float(after) < float(before)


@pytest.mark.parametrize("overrides, field", [
    (["train.grounding_weight=-1.0"], "grounding_weight"),
    (["train.grounding_weight=0.1", "train.grounding_t_max=0.0"], "grounding_t_max"),
    (["train.grounding_weight=0.1", "model.temporal.caption_parts=3"], "caption_parts = 2"),
    (["train.grounding_weight=0.1", "model.temporal.caption_parts=2",
      "model.temporal.caption_split_word='moving'"], "caption_parts = 2"),
    (["train.grounding_weight=0.1", "model.temporal.caption_drop_words=('left',)"],
     "caption_drop_words"),
    (["model.temporal.film_pooling=max"], "film_pooling"),
    (["train.grounding_weight=0.1", "train.grounding_roles=('verb',)"], "grounding_roles"),
    (["train.grounding_weight=0.1", "train.grounding_roles=()"], "grounding_roles"),
    (["train.grounding_weight=0.1", "train.grounding_groups=('film_pool',)"],
     "grounding_groups"),  # a group this model does not have
    (["train.grounding_weight=0.1", "model.temporal.text_adapter_layers=1",
      "train.grounding_groups=('adapter',)"], "grounding_groups"),  # no maps there
    (["model.temporal.film_pooling=attention", "model.temporal.conv_text_conditioning=False"],
     "film_pooling"),
])
def test_bad_grounding_settings_are_named(overrides, field):
  with pytest.raises(ConfigError, match=field):
    load_config("shapes_tiny:t2v", overrides)
