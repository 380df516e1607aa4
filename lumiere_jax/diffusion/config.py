"""The `config.diffusion` section: defaults, validation, and the sampler settings it
implies.

Defaults follow Imagen Video / Lumiere: cosine schedule in continuous time,
v-prediction with plain v-MSE, 10% conditioning dropout for classifier-free guidance.
"""

import math

import ml_collections

from lumiere_jax.diffusion import losses, predictions, samplers, schedules, windows
from lumiere_jax.errors import ConfigError

RESIDUAL_BASES = ("bilinear", "bicubic")  # diffusion.ssr_residual_base


def default_diffusion_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.schedule = "cosine"                # 'cosine' | 'shifted_cosine'
  c.shift_base_resolution = 64         # shifted_cosine: resolution the schedule is tuned at
  c.logsnr_min = -15.0                 # logSNR at t = 1
  c.logsnr_max = 15.0                  # logSNR at t = 0
  c.prediction = "v"                   # 'v' | 'eps' | 'x0'
  c.loss_weighting = "v"               # 'v' | 'eps' | 'x0' | 'min_snr'
  c.min_snr_gamma = 5.0                # 'min_snr' weighting cap
  c.cfg_dropout = 0.1                  # share of training examples given the empty prompt
  # Training noise levels: t is drawn so that its logSNR is the schedule's at a uniform
  # draw plus this shift (< 0: more noise). The network still sees t of the schedule, so
  # a frozen backbone's time embedding keeps its meaning; only the mix of levels trained
  # changes. -log(T) for T frames, simple diffusion's shift for T-fold redundancy: what
  # the prompt alone decides in a video (where an object goes) is hidden only at high noise.
  c.train_logsnr_shift = 0.0
  # The share of training examples that get the shift (the rest: every level alike), so
  # that one run trains both the high-noise levels where the prompt decides motion and
  # the low-noise ones where edges and shapes are drawn. Not in the paper.
  c.train_logsnr_shift_fraction = 1.0
  # Training times are drawn in [train_t_min, train_t_max] (before any shift): a max below
  # 1 trains a low-noise expert that only ever denoises the last part of sampling
  # (eDiff-I's expert denoisers; `diffusion.expert_switch` at sampling); a min above 0
  # spends every step on the high-noise band. Not in the paper.
  c.train_t_min = 0.0
  c.train_t_max = 1.0
  # Expert denoisers at sampling (eDiff-I's; not in the paper): the sampling steps at
  # times t <= expert_switch are denoised by `low_noise_expert` (the name of a shipped
  # video model of the same clip shape, trained with train_t_max >= expert_switch), the
  # others by this model. An expert_switch of 0 samples with this model alone.
  c.low_noise_expert = ""
  c.expert_switch = 0.0
  # Noise correlated across frames (noise.py; PYoCo's mixed prior, not in the paper): each
  # frame's noise stays N(0, I), two frames' noise at a pixel has this correlation, in
  # training and in every noise draw of sampling. 0 is the paper's independent noise.
  c.frame_noise_correlation = 0.0
  # A training term on an object's size over the clip (losses.frame_mass_drift, not in
  # the paper): this weight times the squared drift over the frames of the x0 error's
  # per-frame mean. 0 trains the paper's plain loss. On shapes_tiny, 100 lowered the term
  # by a fifth but not the samples' wobble (docs/learning_record.md, "Stop 59").
  c.frame_mass_weight = 0.0
  c.sampler = "dpmpp"                  # 'ddpm' | 'ddim' | 'dpmpp'
  c.steps = 64
  c.eta = 0.0                          # DDIM noise (0 = deterministic); 'ddpm' is eta 1
  c.guidance = 3.0                     # classifier-free guidance scale (1 = conditional)
  # Guidance pushes away from this prompt instead of the empty one (n + w (c - n)); "" is
  # plain classifier-free guidance. A model's sampling default, like steps and guidance.
  c.negative_prompt = ""
  c.threshold = "dynamic"              # 'none' | 'static' | 'dynamic'
  c.threshold_percentile = 0.995       # dynamic thresholding quantile of |x0|
  # Temporal MultiDiffusion (windows.py): clips longer than `window` frames are sampled
  # in windows of that many frames overlapping by `window_overlap`, fused every step.
  # 0 = the model's clip length (data.num_frames).
  c.window = 0
  c.window_overlap = 2
  c.window_weighting = "uniform"       # 'uniform' (least squares) | 'ramp'
  # The starting noise of a long clip: 'independent' per frame (the paper's), or 'repeat':
  # the first window's, repeated with local shuffles (windows.repeated_noise_frames).
  c.window_noise = "independent"
  # Rotating windows: each denoising step uses the plan with the windows shifted by
  # a different amount (windows.plan_windows(rotate=True)), so no frame pair is a window
  # edge at every step. Not in the paper (its windows are fixed).
  c.window_rotate = False
  # The sampling time grid: t_i = t_start + (t_end - t_start) (i / steps)^time_power.
  # 1 is the uniform grid; above 1 the steps crowd at high noise, where the prompt decides
  # the motion (docs/learning_record.md, "Sampling steps"). Not in the paper.
  c.time_power = 1.0
  # Noise conditioning augmentation of the SSR model (models/conditioning.py), as times
  # of the schedule: training draws a level per example in [0, noise_aug_max]; sampling
  # noises the low-resolution clip to noise_aug_level (also the model's input).
  c.noise_aug_max = 0.5
  c.noise_aug_level = 0.15
  # SSR only. 0: the model diffuses the high-resolution clip (the paper's SSR). s > 0: it
  # diffuses the residual s * (clip - bilinear upsampling of the clean low-resolution
  # clip), and sampling adds the upsampling back; copying the low-resolution content then
  # costs the network nothing, it only draws the detail (SR3's residual form; not in the
  # paper). s rescales the residual (std ~0.1 on the shapes data) towards the data's ~0.5.
  # Thresholding must be 'none' with it (a threshold of [-1, 1] would cut the residual).
  c.ssr_residual_scale = 0.0
  # The upsampling the residual form diffuses the clip's difference from (the model's
  # conditioning channels stay bilinear): 'bilinear' | 'bicubic' (SR3's choice; then a
  # model that predicts no residual samples bicubic upsampling).
  c.ssr_residual_base = "bilinear"
  # The conditional <J, C, M> model's known pixels (pipelines/applications.py):
  # 'replace' puts them into the model's estimate of the clean clip at every step and
  # into the output (exact), 'model' leaves them to the model (they are only its input).
  # known_dilation > 0 grows the region to fill by that many pixels for the replacement,
  # so the model blends a band around it (against seams; that band is not exact then).
  c.known_pixels = "replace"
  c.known_dilation = 0
  return c


KNOWN_PIXEL_MODES = ("replace", "model")


def check_known_pixels(mode: str, dilation: int) -> None:
  if mode not in KNOWN_PIXEL_MODES:
    raise ConfigError(f"known pixels mode {mode!r} is invalid; allowed: one of "
                      f"{KNOWN_PIXEL_MODES}")
  if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 0:
    raise ConfigError(f"known pixels dilation must be an integer >= 0 (pixels), got "
                      f"{dilation!r}")


def validate_diffusion_config(c: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first field the diffusion code cannot use."""
  if c.schedule not in schedules.SCHEDULES:
    raise ConfigError(f"diffusion.schedule={c.schedule!r} is invalid; allowed: one of "
                      f"{schedules.SCHEDULES}")
  schedules.Schedule(c.logsnr_min, c.logsnr_max)
  if c.shift_base_resolution < 1:
    raise ConfigError(f"diffusion.shift_base_resolution={c.shift_base_resolution} is "
                      "invalid; allowed: a positive number of pixels")
  if not math.isfinite(c.train_logsnr_shift):
    raise ConfigError(f"diffusion.train_logsnr_shift={c.train_logsnr_shift} is invalid; "
                      "allowed: a finite number (0 trains every noise level alike)")
  if not 0.0 <= c.train_logsnr_shift_fraction <= 1.0:
    raise ConfigError(f"diffusion.train_logsnr_shift_fraction={c.train_logsnr_shift_fraction}"
                      " is invalid; allowed: [0, 1] (the share of examples shifted)")
  if not 0.0 < c.train_t_max <= 1.0:
    raise ConfigError(f"diffusion.train_t_max={c.train_t_max} is invalid; allowed: (0, 1] "
                      "(the largest training time)")
  t_min = c.get("train_t_min", 0.0)  # configs saved before the field
  if not 0.0 <= t_min < c.train_t_max:
    raise ConfigError(f"diffusion.train_t_min={t_min} is invalid; allowed: [0, "
                      f"train_t_max={c.train_t_max}) (the smallest training time)")
  check_expert_switch(c.expert_switch)
  if c.expert_switch and not c.low_noise_expert:
    raise ConfigError(f"diffusion.expert_switch={c.expert_switch} needs "
                      "diffusion.low_noise_expert (a shipped model's name)")
  predictions.check_prediction(c.prediction)
  losses.check_weighting(c.loss_weighting)
  if not 0.0 <= c.cfg_dropout < 1.0:
    raise ConfigError(f"diffusion.cfg_dropout={c.cfg_dropout} is invalid; allowed: [0, 1)")
  check_guidance(c.guidance)
  mass = c.get("frame_mass_weight", 0.0)
  if not (isinstance(mass, (int, float)) and math.isfinite(mass) and mass >= 0):
    raise ConfigError(f"diffusion.frame_mass_weight={mass} is invalid; allowed: a finite "
                      "number >= 0 (0: the plain loss)")
  sampler_settings(c)
  if c.window < 0 or c.window_overlap < 0 or (c.window and c.window <= c.window_overlap):
    raise ConfigError(f"diffusion.window={c.window} / diffusion.window_overlap="
                      f"{c.window_overlap} are invalid; allowed: overlap >= 0 and a window "
                      "larger than it (window 0: the model's clip length)")
  if c.get("window_noise", "independent") not in windows.NOISE_MODES:
    raise ConfigError(f"diffusion.window_noise={c.window_noise!r} is invalid; allowed: one "
                      f"of {windows.NOISE_MODES}")
  if not isinstance(c.get("window_rotate", False), bool):
    raise ConfigError(f"diffusion.window_rotate={c.window_rotate!r} is invalid; allowed: "
                      "True or False")
  if c.window_weighting not in windows.WEIGHTINGS:
    raise ConfigError(f"diffusion.window_weighting={c.window_weighting!r} is invalid; "
                      f"allowed: one of {windows.WEIGHTINGS}")
  check_known_pixels(c.known_pixels, c.known_dilation)
  for field in ("noise_aug_max", "noise_aug_level"):
    if not 0.0 <= c[field] <= 1.0:
      raise ConfigError(f"diffusion.{field}={c[field]} is invalid; allowed: a time of the "
                        "schedule in [0, 1]")
  if not (math.isfinite(c.ssr_residual_scale) and c.ssr_residual_scale >= 0):
    raise ConfigError(f"diffusion.ssr_residual_scale={c.ssr_residual_scale} is invalid; "
                      "allowed: a finite number >= 0 (0: diffuse the clip itself)")
  if c.ssr_residual_base not in RESIDUAL_BASES:
    raise ConfigError(f"diffusion.ssr_residual_base={c.ssr_residual_base!r} is invalid; "
                      f"allowed: one of {RESIDUAL_BASES}")
  if c.ssr_residual_scale and c.threshold != "none":
    raise ConfigError(f"diffusion.ssr_residual_scale={c.ssr_residual_scale} needs "
                      f"diffusion.threshold='none', got {c.threshold!r} (thresholding the "
                      "residual to [-1, 1] would cut it)")


def check_expert_switch(switch: float) -> None:
  if not (math.isfinite(switch) and 0.0 <= switch < 1.0):
    raise ConfigError(f"expert switch {switch} is invalid; allowed: a time in [0, 1) "
                      "(0: no low-noise expert)")


def check_guidance(scale: float) -> None:
  if not (math.isfinite(scale) and scale >= 0):
    raise ConfigError(f"guidance scale must be >= 0 (and finite), got {scale}")


def sampler_settings(c: ml_collections.ConfigDict, **overrides) -> samplers.SamplerSettings:
  """SamplerSettings from the config, with command-line values (not None) on top."""
  values = dict(method=c.sampler, steps=c.steps, eta=c.eta, prediction=c.prediction,
                threshold=c.threshold, threshold_percentile=c.threshold_percentile,
                time_power=c.get("time_power", 1.0),
                noise_correlation=c.get("frame_noise_correlation", 0.0))
  values.update({k: v for k, v in overrides.items() if v is not None})
  return samplers.SamplerSettings(**values)

