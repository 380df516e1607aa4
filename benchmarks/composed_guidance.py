"""Probe (stop 35, not kept): composed guidance for two-object prompts (Liu et al. 2022's
AND), on the shipped pair at its defaults.

  guided = n + w (c_full - n) + wc sum_i (c_i - n),  c_i: the prompt's " and " phrases

Samples only the two-object prompts of `lumiere eval shapes --num NUM` (seed 0, the same
noise per prompt as the eval) and prints their accuracies beside ground truth's; wc = 0 is
the shipped pair's plain CFG. Measured (docs/learning_record.md, ablations): wc 1.5 lost
half the two-object figures. The sampler compiles wc in, so one wc per process.

  python benchmarks/composed_guidance.py NUM WC
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from lumiere_jax import runtime, weights
from lumiere_jax.diffusion import config as diffusion_config
from lumiere_jax.diffusion import denoisers
from lumiere_jax.evaluation import shapes_eval
from lumiere_jax.pipelines import generate

runtime.apply_cpu_defaults()
NUM = int(sys.argv[1])
WC = float(sys.argv[2])
K = 3  # full, part 1, part 2


def composed(denoiser, uncond, scales):
  def guided(x, t, cond):
    b = x.shape[0]

    def stack(c, u):  # c [B, K, ...], u [1 or B, ...] -> [B (K + 1), ...]
      u = jnp.broadcast_to(u, (b,) + c.shape[2:])[:, None]
      both = jnp.concatenate([c, u], axis=1)
      return both.reshape((b * (K + 1),) + c.shape[2:])

    conds = jax.tree_util.tree_map(stack, cond, uncond)
    out = denoiser(jnp.repeat(x, K + 1, axis=0), jnp.repeat(t, K + 1), conds)
    out = out.reshape((b, K + 1) + out.shape[1:])
    n = out[:, K]
    return n + sum(scales[k] * (out[:, k] - n) for k in range(K))
  return guided


class Composed(generate.TextToVideo):
  wc = WC

  def encode(self, params, tokens, negative_tokens, expert_params=None):
    def enc(model, p):
      flat = tokens.reshape((-1, tokens.shape[-1]))
      c = model.encode(p["text"], flat)
      c = jax.tree_util.tree_map(lambda a: a.reshape(tokens.shape[:2] + a.shape[1:]), c)
      return c, model.encode(p["text"], negative_tokens)
    out = {"model": enc(self.model, params)}
    if self.expert is not None:
      out["expert"] = enc(self.expert, expert_params)
    return out

  def _guided_from(self, params, encodings, guidance_scale, expert_params):
    scales = (guidance_scale, self.wc, self.wc)
    hi = composed(denoisers.bind(self.model.denoise, params), encodings["model"][1], scales)
    lo = composed(denoisers.bind(self.expert.denoise, expert_params),
                  encodings["expert"][1], scales)
    cond, low_cond = encodings["model"][0], encodings["expert"][0]
    switch = self.expert_switch

    def experts(x, t, c):
      return jax.lax.cond(t[0] > switch, lambda: hi(x, t, c), lambda: lo(x, t, low_cond))
    return experts, cond

  def sample(self, captions, seed, guidance):
    parts = []
    for c in captions:
      p = c.split(" and ")
      p = p if len(p) > 1 else [""]
      parts.append([c] + p + [""] * (K - 1 - len(p)))
    tokens = np.stack([np.asarray(self.model.tokenize(p)) for p in parts])
    negative = self.model.tokenize([""])
    seeds = np.arange(seed, seed + len(captions), dtype=np.int32)
    return np.asarray(self.sampler(self.params, tokens, negative, seeds, np.float32(guidance),
                                   None, np.float32(1.0), self.expert_params))


config, params = weights.load_model(name="shapes_t2v")
settings = diffusion_config.sampler_settings(config.diffusion)
model = Composed(config, params, settings)
items = shapes_eval.held_out_items(NUM, 0, config.data.resolution, config.data.num_frames)
idx = [i for i in range(NUM) if shapes_eval.two_objects(i)]
print("two-object prompts:", len(idx), flush=True)
start = time.time()
# Video i uses seed i, as in the eval (seed 0).
videos = [model.sample([items[i].caption], i, config.diffusion.guidance)[0] for i in idx]
captions = [items[i].caption for i in idx]
model_scores = shapes_eval.score(videos, captions)["by_count"]["two objects"]
truth = shapes_eval.score([items[i].ground_truth for i in idx], captions)
print(f"wc={WC}: model {model_scores}  ground truth {truth['by_count']['two objects']}  "
      f"({time.time() - start:.0f} s)", flush=True)
