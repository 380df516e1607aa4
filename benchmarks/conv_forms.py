"""A 3x3 convolution four ways on the CPU: XLA's own, im2col + one matmul, nine shifted
matmuls, and XLA's own with the weight gradient as one matmul ("hybrid"); forward and
forward + both gradients, GFLOP/s (medians of 15).

  python benchmarks/conv_forms.py
  LUMIERE_XLA_CPU_DEFAULTS=off python benchmarks/conv_forms.py   # the same: XLA's options
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= python benchmarks/conv_forms.py

Asks whether "small convolutions as matmuls" speeds up the CPU path (issue 18); the
answer on the machines of benchmarks/RESULTS.md was no at every size. This script does
not add lumiere's per-CPU XLA options (runtime.apply_cpu_defaults): XLA_FLAGS says
which convolution path XLA takes.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = ((32, 32, 32, 32), (32, 16, 64, 64), (32, 8, 128, 128))  # batch, size, in, out


def median_seconds(fn, *args, repeats: int = 15) -> float:
  fn(*args).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(*args).block_until_ready()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def conv_xla(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _taps(x, w):
  kh, kw = w.shape[:2]
  padded = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  h, wd = x.shape[1:3]
  return [(i, j, padded[:, i:i + h, j:j + wd, :]) for i in range(kh) for j in range(kw)]


def conv_im2col(x, w):
  columns = jnp.concatenate([tap for _, _, tap in _taps(x, w)], axis=-1)
  return columns @ w.reshape(-1, w.shape[-1])


def conv_shifted(x, w):
  return sum(tap @ w[i, j] for i, j, tap in _taps(x, w))


def _weight_grad_matmul(x, g, kernel_shape):
  """dL/dw of a stride-1 SAME convolution as one matmul: the input's taps side by side
  [N, kh*kw*Cin] (transposed) times the output gradient [N, Cout]."""
  kh, kw, cin, cout = kernel_shape
  columns = jnp.concatenate([tap for _, _, tap in _taps(x, jnp.zeros(kernel_shape[:2]))],
                            axis=-1)
  return (columns.reshape(-1, kh * kw * cin).T @ g.reshape(-1, cout)).reshape(kernel_shape)


@jax.custom_vjp
def conv_hybrid(x, w):
  return conv_xla(x, w)


def _hybrid_fwd(x, w):
  return conv_xla(x, w), (x, w)


def _hybrid_bwd(residuals, g):
  x, w = residuals
  dx = jax.vjp(lambda x: conv_xla(x, w), x)[1](g)[0]
  return dx, _weight_grad_matmul(x, g, w.shape)


conv_hybrid.defvjp(_hybrid_fwd, _hybrid_bwd)


def main() -> None:
  rng = np.random.default_rng(0)
  for batch, size, cin, cout in SHAPES:
    x = jnp.asarray(rng.standard_normal((batch, size, size, cin)), jnp.float32)
    w = jnp.asarray(0.1 * rng.standard_normal((3, 3, cin, cout)), jnp.float32)
    flops = 2 * batch * size * size * 9 * cin * cout
    row = {}
    for name, conv in (("xla", conv_xla), ("im2col", conv_im2col), ("shifted", conv_shifted),
                       ("hybrid", conv_hybrid)):
      np.testing.assert_allclose(conv(x, w), conv_xla(x, w), rtol=1e-4, atol=1e-4)
      loss = lambda x, w, c=conv: jnp.sum(c(x, w) ** 2)
      for got, want in zip(jax.grad(loss, (0, 1))(x, w), jax.grad(
          lambda x, w: jnp.sum(conv_xla(x, w) ** 2), (0, 1))(x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-2)
      forward = median_seconds(jax.jit(conv), x, w)
      grads = jax.jit(jax.grad(lambda x, w, c=conv: jnp.sum(c(x, w) ** 2), argnums=(0, 1)))
      both = median_seconds(lambda x, w: grads(x, w)[1], x, w)
      row[name] = (flops / forward / 1e9, 3 * flops / both / 1e9)
    print(f"{size}x{size}, {cin} -> {cout}: " + ", ".join(
        f"{name} {f:.0f} / {g:.0f} GFLOP/s (forward / with grads)"
        for name, (f, g) in row.items()))


if __name__ == "__main__":
  main()
