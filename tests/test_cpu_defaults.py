"""The XLA:CPU options lumiere adds per CPU family (runtime.apply_cpu_defaults), a device
per core (apply_cpu_devices) and glibc's malloc on huge pages (restart_with_huge_pages)."""

import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lumiere_jax import runtime
from lumiere_jax.errors import UserError

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512_bf16"}
ARM = frozenset({"fp", "asimd", "sve"})


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 fma\n"
                     "bugs\t\t: sysret_ss_attrs\n\nprocessor\t: 1\nflags\t\t: fpu sse avx2 fma\n")
  assert runtime.cpu_flags(str(cpuinfo)) == {"fpu", "sse", "avx2", "fma"}
  assert runtime.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_x86_cpus_with_avx2_get_the_options_with_or_without_avx512():
  assert runtime.cpu_default_flags(AVX2) == runtime.X86_FLAGS
  assert runtime.cpu_default_flags(AVX512) == runtime.X86_FLAGS
  assert runtime.cpu_default_flags(ARM) == ()  # XLA's defaults: not measured there
  assert runtime.cpu_default_flags(frozenset()) == ()  # no /proc/cpuinfo


def test_the_options_are_added_unless_set_or_turned_off(monkeypatch, tmp_path):
  cache = str(tmp_path / "cache")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  monkeypatch.delenv(runtime.CPU_DEFAULTS_ENV, raising=False)
  assert runtime.apply_cpu_defaults(cache, ARM) == ()
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
  assert runtime.apply_cpu_defaults(cache, AVX2) == runtime.X86_FLAGS
  assert os.environ["XLA_FLAGS"].split() == [
      "--xla_force_host_platform_device_count=2", *runtime.X86_FLAGS]
  assert runtime.apply_cpu_defaults(cache, AVX2) == ()  # already there: nothing twice
  user = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
  monkeypatch.setenv("XLA_FLAGS", user)
  assert runtime.apply_cpu_defaults(cache, AVX2) == ()  # the user's value wins
  assert os.environ["XLA_FLAGS"] == user
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.setenv(runtime.CPU_DEFAULTS_ENV, "off")
  assert runtime.apply_cpu_defaults(cache, AVX2) == () and os.environ["XLA_FLAGS"] == ""


def test_an_option_this_jaxlib_does_not_take_is_left_out(monkeypatch, tmp_path):
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.delenv(runtime.CPU_DEFAULTS_ENV, raising=False)
  monkeypatch.setattr(runtime, "X86_FLAGS", ("--xla_cpu_use_fast_magic=true",))
  assert runtime.apply_cpu_defaults(str(tmp_path), AVX2) == ()
  assert os.environ["XLA_FLAGS"] == ""


CONV_PROGRAM = textwrap.dedent("""
    import sys
    import numpy as np
    from lumiere_jax import runtime
    runtime.apply_cpu_defaults(sys.argv[2], frozenset(sys.argv[3].split(",")))
    import jax, jax.numpy as jnp
    def conv(x, w):
      return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 16, 16, 32)), jnp.float32)
    w = jnp.asarray(0.1 * rng.standard_normal((3, 3, 32, 32)), jnp.float32)
    grads = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), (0, 1)))
    print("ynn" in grads.lower(x, w).compile().as_text().lower())
    np.savez(sys.argv[1], *grads(x, w))
""")


def test_the_options_change_the_program_not_the_gradients(tmp_path):
  """In fresh processes (the options act when the backend starts): with the x86 options
  the convolution and its gradients compile without YNNPACK fusions and equal XLA's
  default program's (as on a CPU without the options) to float rounding."""
  results = {}
  for name, cpu in (("default", ",".join(ARM)), ("avx2", "avx2,avx512f")):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="",
               LUMIERE_COMPILATION_CACHE="off")
    env.pop(runtime.CPU_DEFAULTS_ENV, None)
    out = tmp_path / f"{name}.npz"
    run = subprocess.run([sys.executable, "-c", CONV_PROGRAM, str(out), str(tmp_path), cpu],
                         env=env, capture_output=True, text=True, timeout=300, check=True)
    results[name] = (run.stdout.split()[-1], dict(np.load(out)))
  assert results["avx2"][0] == "False"
  for key, value in results["default"][1].items():
    np.testing.assert_allclose(results["avx2"][1][key], value, rtol=1e-4,
                               atol=1e-4 * np.abs(value).max())


def test_cpu_devices_option_is_parsed_and_refused_in_one_line(monkeypatch):
  assert runtime.cpu_device_flags("", 2) == ()
  assert runtime.cpu_device_flags("cores", 2) == (
      "--xla_force_host_platform_device_count=2", "--xla_cpu_multi_thread_eigen=false")
  assert runtime.cpu_device_flags("3", 2)[0] == "--xla_force_host_platform_device_count=3"
  for bad in ("0", "-1", "two", "1.5"):
    with pytest.raises(UserError, match="LUMIERE_CPU_DEVICES"):
      runtime.cpu_device_flags(bad, 2)
  monkeypatch.setenv(runtime.CPU_DEVICES_ENV, "2")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  with pytest.raises(UserError, match="both set the CPU device count"):
    runtime.apply_cpu_devices()
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  assert runtime.apply_cpu_devices() == runtime.cpu_device_flags("2", 2)
  assert os.environ["XLA_FLAGS"].split()[0] == "--xla_cpu_enable_fast_math=false"
  monkeypatch.delenv(runtime.CPU_DEVICES_ENV)
  monkeypatch.setenv("XLA_FLAGS", "")
  assert runtime.apply_cpu_devices() == () and os.environ["XLA_FLAGS"] == ""


def test_a_bad_cpu_devices_value_is_one_line_and_exit_2():
  env = dict(os.environ, LUMIERE_CPU_DEVICES="none")
  run = subprocess.run([sys.executable, "-m", "lumiere_jax.cli", "bench", "tiny-t2v"],
                       env=env, capture_output=True, text=True, timeout=120, check=False)
  assert run.returncode == 2
  assert run.stderr.strip().splitlines() == [
      "lumiere bench: error: LUMIERE_CPU_DEVICES='none': give 'cores' or a device count >= 1"]


DATA_PARALLEL_PROGRAM = textwrap.dedent("""
    import sys
    import numpy as np
    from lumiere_jax import runtime
    runtime.apply_cpu_devices()
    import jax, jax.numpy as jnp
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    devices = jax.devices()
    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,))
    def loss(w, x):
      y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return jnp.mean(jax.nn.silu(y) ** 2)
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((8, 32, 32, 16)).astype(np.float32),
                       NamedSharding(mesh, P("data")))
    w = jax.device_put((0.1 * rng.standard_normal((3, 3, 16, 32))).astype(np.float32),
                       NamedSharding(mesh, P()))
    grad = jax.jit(jax.grad(loss))(w, x)
    print(len(devices), len(x.addressable_shards))
    np.save(sys.argv[1], np.asarray(grad))
""")


def test_a_device_per_core_splits_the_batch_and_keeps_the_gradient(tmp_path):
  """LUMIERE_CPU_DEVICES=2 in a fresh process: two CPU devices, the batch in two
  shards, and the kernel gradient summed across them equals one device's."""
  grads = {}
  for name, value in (("one", ""), ("two", "2")):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", LUMIERE_CPU_DEVICES=value,
               LUMIERE_COMPILATION_CACHE="off")
    out = tmp_path / f"{name}.npy"
    run = subprocess.run([sys.executable, "-c", DATA_PARALLEL_PROGRAM, str(out)], env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    grads[name] = (run.stdout.split()[-2:], np.load(out))
  assert grads["one"][0] == ["1", "1"] and grads["two"][0] == ["2", "2"]
  reference = grads["one"][1]
  assert np.abs(reference).max() > 0
  np.testing.assert_allclose(grads["two"][1], reference, rtol=1e-5,
                             atol=1e-5 * np.abs(reference).max())


# -- glibc's malloc with transparent huge pages (runtime.restart_with_huge_pages) ---------

GLIBC = ("glibc", "2.36")


def test_huge_pages_are_asked_for_only_where_they_can_be_had():
  assert runtime.malloc_tunables({}, GLIBC, "madvise") == "glibc.malloc.hugetlb=1"
  assert runtime.malloc_tunables({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, GLIBC,
                                 "madvise") == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert runtime.malloc_tunables({}, ("glibc", "2.35"), "madvise") is not None
  for environ, libc, thp in (
      ({}, GLIBC, "always"),  # every mapping gets huge pages already
      ({}, GLIBC, "never"),
      ({}, GLIBC, ""),  # not Linux
      ({}, ("glibc", "2.34"), "madvise"),  # before the tunable
      ({}, ("", ""), "madvise"),  # musl and others
      ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, "madvise"),  # the user's own
      ({runtime.HUGE_PAGES_ENV: "off"}, GLIBC, "madvise")):
    assert runtime.malloc_tunables(environ, libc, thp) is None, (environ, libc, thp)


def test_the_thp_mode_is_the_bracketed_word(tmp_path):
  mode = tmp_path / "enabled"
  mode.write_text("always [madvise] never\n")
  assert runtime.thp_mode(str(mode)) == "madvise"
  assert runtime.thp_mode(str(tmp_path / "missing")) == ""


RESTARTING_PROGRAM = textwrap.dedent("""
    import ctypes, os, resource
    from lumiere_jax import runtime
    print("started", flush=True)
    runtime.restart_with_huge_pages()
    print("tunables", os.environ.get("GLIBC_TUNABLES", ""))
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_void_p,)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):  # what XLA:CPU does with a program's temporaries at every call
      buffer = libc.malloc(48 << 20)
      ctypes.memset(buffer, 1, 48 << 20)
      libc.free(buffer)
    print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(runtime.malloc_tunables({}, platform.libc_ver(),
                                            runtime.thp_mode()) is None,
                    reason="needs glibc >= 2.35 and the kernel's THP mode 'madvise'")
def test_a_restart_adds_the_tunable_once_and_big_buffers_fault_far_less(tmp_path):
  script = tmp_path / "restart.py"
  script.write_text(RESTARTING_PROGRAM)

  def run(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", runtime.HUGE_PAGES_ENV)}
    done = subprocess.run([sys.executable, str(script)], env={**env, **extra},
                          capture_output=True, text=True, timeout=120, check=True)
    lines = done.stdout.split("\n")
    return (lines.count("started"), lines[-3].split(" ", 1)[1], int(lines[-2].split()[1]))

  starts, tunables, huge = run(GLIBC_TUNABLES="glibc.malloc.arena_max=4")
  assert (starts, tunables) == (2, "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1")
  starts, tunables, small = run(**{runtime.HUGE_PAGES_ENV: "off"})
  assert (starts, tunables) == (1, "")
  # 8 x 48 MiB from malloc (numpy would ask for huge pages itself): 98k faults of 4 KiB
  # pages; here 4.3k with the tunable
  assert small >= 8 * (48 << 20) // 4096
  assert huge * 8 < small, (huge, small)
