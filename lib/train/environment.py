"""Where a run's floats came from: what, besides its config, decides its numbers bit for bit.

A config reproduces its run exactly only where these are the same. Measured on this project's
2-core CPU machine (docs/results.md, "The same command on another machine"): XLA:CPU compiles for
the host's instruction set (the same quickstart tune, `--xla_cpu_max_isa=AVX2` against the host's
AVX-512, fits another lr rule), and splits a long contraction over its threads (a [8192, 64]^T x
[8192, 256] matmul differs in its last bits between 1 and 2 cores), so another CPU model or core
count gives other rounding, which a sweep's lr choices can amplify into other fitted numbers. The
summary of each run records this (`environment`), the fit lists the environments its runs came
from and warns when they differ, and `benchmarks/compare_roots.py` names them before comparing.
"""

from __future__ import annotations

import functools
import os
import platform
import re

# The instruction-set levels XLA:CPU can target, highest first, by the /proc/cpuinfo flag that marks
# each (the names XLA's --xla_cpu_max_isa takes).
_ISA_FLAGS = (("AMX", "amx_tile"), ("AVX512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx"), ("SSE4_2", "sse4_2"))


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:  # not Linux
        return ""


def cpu_model(cpuinfo: str) -> str:
    """The CPU's name with its family/model/stepping (a VM's "Intel(R) Xeon(R) Processor" names no
    generation; the numbers do)."""
    def field(key: str) -> str | None:
        m = re.search(rf"^{key}\s*:\s*(.+)$", cpuinfo, re.M)
        return m.group(1).strip() if m else None

    name = field("model name") or platform.processor() or platform.machine()
    ids = [v for v in (field("cpu family"), field("model"), field("stepping")) if v]
    return f"{name} [{'/'.join(ids)}]" if len(ids) == 3 else name


def cpu_isa(cpuinfo: str) -> str:
    """The highest instruction-set level this CPU offers XLA (x86), or its architecture (arm64, ...)."""
    m = re.search(r"^flags\s*:(.*)$", cpuinfo, re.M)
    flags = set(m.group(1).split()) if m else set()
    return next((isa for isa, flag in _ISA_FLAGS if flag in flags), platform.machine())


def cpu_threads() -> int:
    """The cores this process may run on: XLA:CPU sizes its thread pool by them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def numerics_flags(xla_flags: str) -> str:
    """XLA_FLAGS less the virtual device count, which splits the host into devices (the mesh, recorded
    as n_devices) and does not change how one device computes."""
    return " ".join(f for f in xla_flags.split() if not f.startswith("--xla_force_host_platform_device_count"))


def numerics_environment(device) -> dict:
    """{jax, jaxlib, platform, device_kind, [cpu, isa, threads | platform_version], xla_flags, key} of
    a run on `device` (a jax Device): `key` is one line, equal for two runs exactly when the rest is
    (the fit groups runs by it)."""
    version = getattr(getattr(device, "client", None), "platform_version", None)
    return dict(_environment(device.platform, device.device_kind, str(version) if version is not None else None))


@functools.lru_cache(maxsize=None)
def _environment(platform_name: str, device_kind: str, platform_version: str | None) -> dict:
    import jax
    import jaxlib

    env: dict = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "platform": platform_name, "device_kind": device_kind}
    if platform_name == "cpu":
        info = _cpuinfo()
        env.update(cpu=cpu_model(info), isa=cpu_isa(info), threads=cpu_threads())
    else:  # the CUDA / ROCm / TPU runtime's version
        env["platform_version"] = platform_version
    env["xla_flags"] = numerics_flags(os.environ.get("XLA_FLAGS", ""))
    env["key"] = environment_key(env)
    return env


def environment_key(env: dict) -> str:
    where = (f"{env['cpu']} ({env['isa']}, {env['threads']} thread{'s' * (env['threads'] != 1)})"
             if env.get("platform") == "cpu" else f"{env.get('device_kind')} ({env.get('platform_version')})")
    flags = f", XLA_FLAGS {env['xla_flags']}" if env.get("xla_flags") else ""
    return f"{where}, jax {env.get('jax')}/jaxlib {env.get('jaxlib')}{flags}"
