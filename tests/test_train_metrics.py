"""Metric summaries, throughput and MFU, and the loss-curve report (pure host code)."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from lumiere_jax.errors import UserError
from lumiere_jax.train import metrics, report


def test_summary_counts_non_finite_steps_and_leaves_them_out_of_the_means():
  steps = [{"loss": 1.0, "grad_norm": 2.0, "finite": True},
           {"loss": math.nan, "grad_norm": math.inf, "finite": False},
           {"loss": 3.0, "grad_norm": 4.0, "finite": True}]
  assert metrics.summarize(steps) == {"nonfinite_steps": 1.0, "loss": 2.0, "grad_norm": 3.0}


def test_throughput_and_mfu_against_a_configured_or_known_peak():
  result = metrics.throughput(steps=10, seconds=5.0, batch_size=8, flops_per_step=1e12,
                              peak_per_device=1e12, num_devices=4)
  assert result["steps_per_s"] == 2.0 and result["examples_per_s"] == 16.0
  assert result["mfu"] == pytest.approx(0.5)
  assert "mfu" not in metrics.throughput(10, 5.0, 8, 1e12, None, 4)
  assert metrics.peak_flops_per_device(0.0, "TPU v5 lite") == 197e12
  assert metrics.peak_flops_per_device(0.0, "NVIDIA H100 80GB HBM3") == 989e12
  assert metrics.peak_flops_per_device(0.0, "cpu") is None
  assert metrics.peak_flops_per_device(5e12, "cpu") == 5e12


def test_loss_curve_report(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  lines = [{"step": s, "loss": 1.0 / s} for s in range(1, 60)] + [{"step": 60, "loss": math.nan}]
  (run / metrics.METRICS_FILE).write_text("\n".join(json.dumps(l) for l in lines))
  out = report.plot_loss_curves([run, run], tmp_path / "loss.png")
  image = np.asarray(Image.open(out))
  assert image.shape == (2 * report.PANEL_H, report.PANEL_W, 3)
  assert (image != 255).any()
  with pytest.raises(UserError, match="does not exist"):
    report.plot_loss_curves([tmp_path / "nowhere"], tmp_path / "x.png")
