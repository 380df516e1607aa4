"""The Fréchet video distance: the distance itself against closed forms and scipy's
sqrtm, scores that refuse comparison across settings, I3D on random weights (shape,
determinism, weight files), and the shapes feature classifier."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

from lumiere_jax.errors import UserError
from lumiere_jax.evaluation import frechet, i3d, shapes_features


def _random_spd(rng, d, rank=None):
  a = rng.normal(size=(d, rank or d))
  return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


def _scipy_distance(mu1, cov1, mu2, cov2):
  root = scipy.linalg.sqrtm(cov1 @ cov2).real
  diff = mu1 - mu2
  return diff @ diff + np.trace(cov1 + cov2 - 2 * root)


# The distance -----------------------------------------------------------------------------

def test_distance_to_itself_is_zero_and_symmetric():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(200, 16)), rng.normal(1.0, 2.0, size=(150, 16))
  sx, sy = frechet.gaussian_stats(x), frechet.gaussian_stats(y)
  assert frechet.frechet_distance(*sx, *sx) == pytest.approx(0.0, abs=1e-9)
  assert frechet.frechet_distance(*sx, *sy) == pytest.approx(
      frechet.frechet_distance(*sy, *sx), rel=1e-10)
  assert frechet.frechet_distance(*sx, *sy) > 1.0


def test_closed_form_for_diagonal_gaussians_even_singular_ones():
  mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([3.0, 1.0, 0.0])
  for a, b in (([1.0, 2.0, 4.0], [9.0, 0.5, 1.0]), ([1.0, 0.0, 4.0], [0.0, 0.0, 1.0])):
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(
        expected, rel=1e-10)


def test_agrees_with_scipy_sqrtm_on_random_spd_matrices():
  rng = np.random.default_rng(1)
  for d in (2, 8, 64):
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    cov1, cov2 = _random_spd(rng, d), _random_spd(rng, d)
    assert frechet.frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(
        _scipy_distance(mu1, cov1, mu2, cov2), rel=1e-7, abs=1e-9)


def test_singular_covariances_give_a_finite_distance():
  rng = np.random.default_rng(2)
  cov1, cov2 = _random_spd(rng, 32, rank=5), _random_spd(rng, 32, rank=5)
  value = frechet.frechet_distance(np.zeros(32), cov1, np.zeros(32), cov2)
  assert np.isfinite(value) and value > 0
  assert frechet.frechet_distance(np.zeros(32), cov1, np.zeros(32), cov1) == pytest.approx(
      0.0, abs=1e-9)


def test_gaussian_stats_are_unbiased_and_refuse_one_sample():
  x = np.random.default_rng(3).normal(size=(10, 4))
  mean, cov = frechet.gaussian_stats(x)
  np.testing.assert_allclose(cov, np.cov(x.T, ddof=1))
  np.testing.assert_allclose(mean, x.mean(0))
  with pytest.raises(frechet.SampleError, match="at least 2 samples"):
    frechet.gaussian_stats(x[:1])


# Scores and extractors --------------------------------------------------------------------

def _score(**changes):
  base = dict(value=12.5, extractor="shapes", weights="abc", preprocess="p", feature_dim=64,
              frames=16, resolution=(32, 32), num_real=256, num_fake=256, label="stunet")
  return frechet.FrechetScore(**{**base, **changes})


def test_score_json_round_trip(tmp_path):
  score = _score(reference="shapes held-out, seed 0")
  assert frechet.FrechetScore.from_json(score.to_json()) == score
  assert frechet.read_score(frechet.write_score(tmp_path / "s.json", score)) == score


def test_scores_with_different_settings_are_refused_in_one_line(tmp_path):
  assert frechet.compare(_score(value=10.0), _score(value=4.0, label="tsr")) == 6.0
  for change, name in ((dict(frames=8), "frames"), (dict(num_fake=128), "num_fake"),
                       (dict(resolution=(64, 64)), "resolution"),
                       (dict(extractor="i3d"), "extractor"), (dict(weights="def"), "weights")):
    with pytest.raises(UserError, match=f"not comparable: {name} differs") as error:
      frechet.check_comparable(_score(), _score(**change))
    assert "\n" not in str(error.value)
  (tmp_path / "bad.json").write_text(json.dumps({"value": 1.0}))
  with pytest.raises(UserError, match="is not a Fréchet score"):
    frechet.read_score(tmp_path / "bad.json")


def _mean_colour_extractor():
  """A tiny extractor for the plumbing: mean colour and its first-to-last change."""
  def apply(videos):
    return np.concatenate([videos.mean((1, 2, 3)), videos[:, -1].mean((1, 2)) -
                           videos[:, 0].mean((1, 2))], axis=1)
  return frechet.FeatureExtractor("colour", apply, 6, 2, None, "none", "")


def test_fvd_end_to_end_and_its_refusals():
  rng = np.random.default_rng(4)
  real = rng.random((40, 4, 8, 8, 3), np.float32)
  fake = np.clip(real * 0.5 + 0.3, 0, 1)
  extractor = _mean_colour_extractor()
  same = frechet.fvd(real, (real * 255).round().astype(np.uint8), extractor, batch=16)
  assert same.value < 1e-4 and same.num_real == 40 and same.resolution == (8, 8)
  assert frechet.fvd(real, fake, extractor, batch=16).value > 10 * same.value
  with pytest.raises(frechet.SampleError, match="singular covariance"):
    frechet.fvd(real[:6], fake[:6], extractor)
  assert frechet.fvd(real[:6], fake[:6], extractor, allow_singular=True).num_fake == 6
  with pytest.raises(UserError, match=r"values in \[0, 1\]"):
    frechet.fvd(real * 255, fake, extractor)
  with pytest.raises(UserError, match="at least 2 frames"):
    frechet.fvd(real[:, :1], fake[:, :1], extractor)
  with pytest.raises(UserError, match="differ in size"):
    frechet.fvd(real, fake[:, :3], extractor)
  with pytest.raises(UserError, match="no feature extractor named"):
    frechet.get_extractor("nope")


# I3D --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def i3d_params():
  return i3d.init_params(0)


def test_i3d_output_shapes_at_the_fvd_size():
  """At 224 x 224 (CPU forward: seconds per clip), shapes only."""
  params = frechet.unflatten({k: jax.ShapeDtypeStruct(s, jnp.float32)
                              for k, s in i3d.expected_shapes().items()})
  videos = jax.ShapeDtypeStruct((2, i3d.MIN_FRAMES, 64, 64, 3), jnp.float32)
  logits, pooled = jax.eval_shape(i3d.forward, params, videos)
  assert logits.shape == (2, 400) and pooled.shape == (2, 1024)
  assert sum(int(np.prod(s)) for s in i3d.expected_shapes().values()) == 12_704_544


def test_i3d_is_deterministic_and_its_weights_round_trip(i3d_params, tmp_path):
  """On 32 x 32 inputs (the network accepts any size from 32; FVD uses 224)."""
  videos = np.random.default_rng(5).random((2, i3d.MIN_FRAMES, 32, 32, 3), np.float32)
  first = i3d.make_extractor(i3d_params, resolution=32)(videos)
  assert first.shape == (2, 400) and np.isfinite(first).all()
  np.testing.assert_array_equal(first, i3d.make_extractor(i3d_params, resolution=32)(videos))
  assert not np.allclose(first[0], first[1])
  i3d.save_params(tmp_path / "i3d.npz", i3d_params)
  loaded = i3d.load_params(tmp_path / "i3d.npz")
  np.testing.assert_array_equal(first, i3d.make_extractor(loaded, resolution=32)(videos))
  registered = frechet.get_extractor("i3d", tmp_path / "i3d.npz")
  assert registered.feature_dim == 400 and len(registered.weights) == 16
  with pytest.raises(UserError, match="at least 9 frames"):
    registered(videos[:, :8])


def test_i3d_weight_files_that_do_not_match_are_refused_in_one_line(i3d_params, tmp_path):
  flat = frechet.flatten(i3d_params)
  renamed = {k.replace("Mixed_5c", "Mixed_5d"): np.asarray(v) for k, v in flat.items()}
  np.savez(tmp_path / "renamed.npz", **renamed)
  key = "Logits/Conv3d_0c_1x1/conv_3d/bias"
  np.savez(tmp_path / "shape.npz", **{**{k: np.asarray(v) for k, v in flat.items()},
                                      key: np.zeros(401, np.float32)})
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  for name, message in (("renamed.npz", "missing .*Mixed_5c.* unexpected .*Mixed_5d"),
                        ("shape.npz", r"bias is \(401,\), expected \(400,\)"),
                        ("junk.npz", "unreadable"), ("absent.npz", "do not exist")):
    with pytest.raises(UserError, match=message) as error:
      frechet.get_extractor("i3d", tmp_path / name)
    assert "\n" not in str(error.value)
  with pytest.raises(UserError, match="needs a local weights file"):
    frechet.get_extractor("i3d")


# The shapes classifier --------------------------------------------------------------------

def test_shapes_features_and_labels(tmp_path):
  data = shapes_features.render(0, 1, 4)
  assert data["videos"].shape == (4, 16, 32, 32, 3) and data["present"].sum(1).min() >= 1
  assert ((data["shape"] >= 0) == (data["present"] > 0)).all()
  params = shapes_features.init_params(0)
  path = shapes_features.save_params(tmp_path / "shapes.safetensors", params, {"steps": 0})
  extractor = frechet.get_extractor("shapes", path)
  small = extractor(data["videos"] / 255.0)
  assert small.shape == (4, shapes_features.FEATURE_DIM)
  big = np.repeat(np.repeat(data["videos"], 2, axis=2), 2, axis=3) / 255.0  # 64 x 64
  np.testing.assert_allclose(extractor(big), small, rtol=1e-5, atol=1e-5)
  with pytest.raises(UserError, match="16 frames"):
    extractor(big[:, :8])
  np.savez(tmp_path / "i3d_like.npz", a=np.zeros(3))
  with pytest.raises(UserError, match="shapes classifier weights .* do not match"):
    frechet.get_extractor("shapes", tmp_path / "i3d_like.npz")


def test_a_few_shapes_training_steps_reduce_the_loss_on_a_fixed_batch():
  batch = shapes_features.batch_at(shapes_features.render(0, 0, 8), np.arange(8))
  params = shapes_features.init_params(0)
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)
  first = float(shapes_features.loss_fn(params, batch)[0])
  for _ in range(8):
    params, opt_state, _ = shapes_features.train_step(params, opt_state, batch, optimizer)
  assert float(shapes_features.loss_fn(params, batch)[0]) < 0.8 * first


def test_the_shipped_shapes_classifier_reads_held_out_clips_and_tells_motion_from_stills():
  """The shipped extractor's weights (trained with `python -m
  lumiere_jax.evaluation.shapes_features`, 4000 steps): per-head accuracy on ground-truth
  clips it never saw (a seed other than the one its recorded accuracy used), and an FVD
  that puts two samples of the data closer together than the data and the same clips
  frozen at their first frame. (Playing clips backwards would not do: the data's motions
  come in opposite pairs, so reversal keeps the distribution.)"""
  params = shapes_features.load_params(shapes_features.DEFAULT_WEIGHTS)
  scores = shapes_features.accuracy(params, 128, seed=1)
  assert min(scores["colour"], scores["shape"], scores["motion"]) > 0.9, scores
  extractor = frechet.get_extractor("shapes")
  a, b = (shapes_features.render(seed, 1, 128)["videos"] for seed in (2, 3))
  frozen = np.repeat(b[:, :1], b.shape[1], axis=1)
  features = [frechet.extract(v, extractor) for v in (a, b, frozen)]
  stats = [frechet.gaussian_stats(f) for f in features]
  same = frechet.frechet_distance(*stats[0], *stats[1])
  assert 2 * same < frechet.frechet_distance(*stats[0], *stats[2]), same
