"""Diffusion in continuous time: schedules, prediction conversions, the training loss,
classifier-free guidance and the samplers.

Modules:
  schedules    logSNR(t) for t in [0, 1]: cosine and resolution-shifted cosine
  predictions  conversions between v, epsilon and x0 predictions
  losses       `diffusion_loss`, the loss the training loop calls
  guidance     conditioning dropout (training), guided prediction and thresholding (sampling)
  samplers     DDPM, DDIM(eta), DPM-Solver++(2M), SDEdit and DDIM inversion
  analytic     exact optimal denoisers for Gaussian and Gaussian-mixture data (ground truth)
  denoisers    adapting a Lumiere flax module to the denoiser interface
  progress     a tqdm bar fed from inside compiled loops
  config       the `config.diffusion` defaults and their validation

Every function here is pure and works on any array shape with a leading batch axis, so
the same code serves the T2I model, the STUNet, SSR and the conditional model.
"""
