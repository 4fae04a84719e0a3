"""The allocator setting: freed blocks are reused (no fresh page faults), opt-out, errors."""

import json
import os
import platform
import subprocess
import sys

import pytest

from cald_speech import allocator
from cald_speech.errors import ConfigError

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

# Six no-grad scans of 16,384 frames at the base shape (12 heads x 64, d_state 64:
# temporaries of 50 MB, above the 32 MiB up to which glibc's own threshold adapts) after
# three warm-up ones (the heap settles); prints the minor page faults the six took and
# the allocator's mode.
_PROBE = """
import json, resource, sys, torch
from cald_speech.allocator import tune_allocator
from cald_speech.mixers.ops.ssd import ssd_scan
state = tune_allocator()
g = torch.Generator().manual_seed(0)
T, h, p, n = int(sys.argv[1]), 12, 64, 64
x, dt = torch.randn(1, T, h, p, generator=g), torch.randn(1, T, h, generator=g)
A = -torch.rand(h, generator=g)
B, C = torch.randn(1, T, 1, n, generator=g), torch.randn(1, T, 1, n, generator=g)
with torch.no_grad():
    for _ in range(3):
        ssd_scan(x, dt, A, B, C, dt_softplus=True, impl="torch")
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(6):
        ssd_scan(x, dt, A, B, C, dt_softplus=True, impl="torch")
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
print(json.dumps(dict(state, faults=faults)))
"""


def _probe(frames=16384, **env):
    full = {k: v for k, v in os.environ.items()
            if k not in ("CALD_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", _PROBE, str(frames)], capture_output=True,
                         text=True, env=full, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@glibc
def test_tuned_process_reuses_freed_blocks():
    default = _probe(CALD_MALLOC="default")
    tuned = _probe()
    assert default["mode"] == "default" and tuned["mode"] == "tuned"
    assert tuned["mmap_threshold_mb"] == allocator.MMAP_THRESHOLD_MB
    # glibc's defaults hand the scan's temporaries fresh pages again and again (tens of
    # thousands of faults per scan); tuned, once the heap has settled, freed blocks are
    # reused (at most a late growth of the heap faults in once: measured 221,203 against
    # 12,289 over the six scans)
    assert default["faults"] > 60_000
    assert tuned["faults"] < default["faults"] / 5


@glibc
def test_glibc_variables_win():
    res = _probe(frames=64, MALLOC_MMAP_THRESHOLD_="131072")
    assert res["mode"] == "default"


def test_bad_setting_is_a_config_error(monkeypatch):
    monkeypatch.setattr(allocator, "_STATE", {"mode": None})
    monkeypatch.setenv("CALD_MALLOC", "fast")
    with pytest.raises(ConfigError, match="CALD_MALLOC='fast'.*'tuned' or 'default'"):
        allocator.tune_allocator()


@pytest.mark.parametrize("cmd", [["cald-bench", "speed", "--tiny", "--shape", "wav2vec2-base"],
                                 ["cald-transcribe", "--model", "m", "missing.wav"]])
def test_console_scripts_name_the_bad_setting(cmd):
    exe = os.path.join(os.path.dirname(sys.executable), cmd[0])
    proc = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True,
                          env=dict(os.environ, CALD_MALLOC="fast"))
    assert proc.returncode == 2
    assert "CALD_MALLOC='fast'" in proc.stderr and "Traceback" not in proc.stderr
