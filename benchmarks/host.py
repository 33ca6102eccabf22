"""The machine a benchmark's figures belong to, printed with them."""

import os
from typing import Dict

SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def host_line(load: bool = False) -> str:
  """The CPU (lscpu's model name, family and model), its count, the vector
  flags that decide speed here, the RAM, and with `load` the load average
  when the run starts."""
  info: Dict[str, str] = {}
  with open("/proc/cpuinfo") as f:
    for line in f:
      key, _, value = line.partition(":")
      info.setdefault(key.strip(), value.strip())
  flags = set(info.get("flags", "").split())
  with open("/proc/meminfo") as f:
    mem_kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
  shown = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in SHOWN_FLAGS)
  return (
      f"host: {info.get('model name', '?')} (family {info.get('cpu family', '?')}, "
      f"model {info.get('model', '?')}), {os.cpu_count()} CPUs, {shown}, "
      f"{mem_kb / 2**20:.1f} GiB RAM" + (f", load average {os.getloadavg()[0]:.2f}" if load else "")
  )
