"""What the ``cald-bench`` benchmarks share: fresh-process runs, memory meters, tables, plots.

- :func:`run_child` runs one configuration in a fresh Python process (``python -m
  <module> --child <json>``), so that each configuration's peak memory is its own and
  a crash or timeout is recorded rather than fatal;
- :class:`MemoryMeter` measures a pass's peak memory: on CPU the process's
  resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``
  just before the pass; where that is not allowed, ``ru_maxrss``, an upper bound), on
  CUDA ``torch.cuda.max_memory_allocated``;
- :func:`extrapolate` predicts a series' next time or memory from its last two
  points, for skipping configurations that would not fit;
- :func:`format_table`, :func:`write_json`, :func:`loglog_plot`; the machine
  description is :func:`cald_speech.bench.mixers.machine_info`.

Example
-------
>>> print(format_table([{"a": 1, "b": 0.5}], [("a", "A", "d"), ("b", "B", ".2f")]))
A     B
1  0.50
"""

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

__all__ = [
    "MemoryMeter",
    "cpu_info",
    "extrapolate",
    "format_table",
    "loglog_plot",
    "machine_info",
    "run_child",
    "write_json",
]


def cpu_info(path="/proc/cpuinfo"):
    """The first CPU of ``/proc/cpuinfo``: its name, family and model numbers (which
    tell generations apart where the name does not: "AMD EPYC" is both family 25, Zen
    3/4, and family 26, Zen 5) and its vector extensions.

    Example
    -------
    >>> sorted(cpu_info())
    ['cpu', 'cpu_family', 'cpu_model', 'cpu_simd']
    """
    fields = {}
    try:
        with open(path) as fh:
            for line in fh:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    simd = sorted(f for f in fields.get("flags", "").split()
                  if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
    return dict(cpu=fields.get("model name", platform.processor() or ""),
                cpu_family=fields.get("cpu family"), cpu_model=fields.get("model"),
                cpu_simd=" ".join(simd) or None)


def machine_info():
    """CPU (:func:`cpu_info`), cores, memory, torch version and threads, GPU, load
    average."""
    info = dict(
        **cpu_info(),
        cores=os.cpu_count(),
        ram_gb=ram_gb(),
        platform=platform.platform(),
        python=platform.python_version(),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        load_avg=list(os.getloadavg()),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    for pkg in ("mamba_ssm", "causal_conv1d"):
        try:
            mod = __import__(pkg)
            info[pkg] = getattr(mod, "__version__", "installed")
        except Exception:
            info[pkg] = None
    return info


def ram_gb():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return None


def status_mb(field):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak memory of the code between :meth:`start` and :meth:`stop`.

    Arguments
    ---------
    device : str or torch.device
        ``cpu`` or a CUDA device.

    Example
    -------
    >>> meter = MemoryMeter("cpu").start()
    >>> x = bytearray(50 * 2**20)
    >>> stats = meter.stop()
    >>> stats["peak_rss_mb"] >= stats["rss_before_mb"]
    True
    """

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.method = None
        self.before = None
        self.load_peak = None

    def start(self):
        """Resets the peak counters; returns ``self``."""
        self.load_peak = status_mb("VmHWM")
        exact = reset_hwm()
        self.method = "VmHWM" if exact else "ru_maxrss (upper bound)"
        self.before = status_mb("VmRSS")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.cuda_before = torch.cuda.memory_allocated(self.device) / 2**20
        return self

    def stop(self):
        """The measurements, in MB.

        Returns
        -------
        dict
            ``peak_rss_mb`` (resident-set peak of the whole process during the pass:
            interpreter, model, input included), ``extra_rss_mb`` (that peak minus the
            resident set before the pass), ``rss_before_mb``, ``load_peak_rss_mb``
            (peak before the pass, e.g. while loading), ``mem_method``; on CUDA also
            ``cuda_peak_mb`` (max allocated) and ``cuda_extra_mb``.
        """
        if self.method == "VmHWM":
            peak = status_mb("VmHWM")
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if peak is not None and self.before is not None:
            # The kernel updates the high-water mark lazily: a resident set that grew
            # and shrank again between start() and stop() may be missing from it.
            peak = max(peak, self.before)
        out = {
            "peak_rss_mb": peak,
            "extra_rss_mb": None if peak is None or self.before is None
            else max(peak - self.before, 0.0),
            "rss_before_mb": self.before,
            "load_peak_rss_mb": self.load_peak,
            "mem_method": self.method,
        }
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak_cuda = torch.cuda.max_memory_allocated(self.device) / 2**20
            out.update(cuda_peak_mb=peak_cuda, cuda_extra_mb=peak_cuda - self.cuda_before)
        return out


def machine_line(machine, path):
    """One short line naming the machine; the full record goes to ``path`` (the JSON).

    Example
    -------
    >>> machine_line({"cpu": "EPYC", "cores": 2, "torch": "2.11", "cuda": None}, "s.json")
    'machine: EPYC, 2 cores, torch 2.11, no GPU (the full record: s.json)'
    """
    gpu = machine.get("cuda") or "no GPU"
    return (f"machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, torch "
            f"{machine.get('torch', '?')}, {gpu} (the full record: {path})")


def run_child(module, cfg, timeout):
    """Runs ``python -m <module> --child <json cfg>`` and returns its last JSON line.

    Arguments
    ---------
    module : str
        A module whose ``main`` handles ``--child``.
    cfg : dict
        The configuration (JSON-serialisable).
    timeout : float
        Seconds before the child is killed.

    Returns
    -------
    dict
        The child's result, or ``cfg`` with ``status`` ``"timeout"`` / ``"failed"`` and
        a ``reason``.
    """
    cmd = [sys.executable, "-m", module, "--child", json.dumps(cfg)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(cfg, status="timeout", reason=f"over {timeout:.0f} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
        reason = err[-1][:300] if err else f"exit status {proc.returncode}"
        if proc.returncode in (-9, 137):
            reason = f"killed (out of memory?): {reason}"
        return dict(cfg, status="failed", reason=reason)
    return json.loads(lines[-1])


def extrapolate(points, x, lo=1.0, hi=2.0, single=None):
    """Predicts ``y(x)`` from the last two ``(x, y)`` points with a power law.

    The growth exponent is fitted on the last two points and clamped to ``[lo, hi]``;
    with one point it is ``single`` (the growth the system is built for), or the
    pessimistic ``hi`` when ``single`` is not given. ``None`` without points.

    Example
    -------
    >>> extrapolate([(1, 10.0), (2, 20.0)], 8)  # linear growth
    80.0
    >>> extrapolate([(1, 10.0)], 4)  # one point: quadratic
    160.0
    >>> extrapolate([(1, 10.0)], 4, single=1.0)  # one point of a linear-time system
    40.0
    """
    pts = [(float(a), float(b)) for a, b in points if a and b is not None and b > 0]
    if not pts:
        return None
    x1, y1 = pts[-1]
    k = hi if single is None else min(max(float(single), lo), hi)
    if len(pts) > 1:
        x0, y0 = pts[-2]
        if x1 > x0 and y0 > 0:
            import math

            k = min(max(math.log(y1 / y0) / math.log(x1 / x0), lo), hi)
    return y1 * (float(x) / x1) ** k


def _fmt(value, spec):
    if value is None or value == "":
        return "-"
    if spec == "s":
        return str(value)
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def format_table(rows, columns):
    """A right-aligned plain-text table.

    Arguments
    ---------
    rows : list of dict
        The rows.
    columns : list of tuple
        ``(key, header, format spec)``; spec ``"s"`` prints the value as is (left
        aligned), missing values print as ``-``.
    """
    cells = [[_fmt(r.get(k), spec) for k, _, spec in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _) in enumerate(columns)]

    def line(values):
        parts = []
        for (_, _, spec), w, v in zip(columns, widths, values):
            parts.append(v.ljust(w) if spec == "s" else v.rjust(w))
        return "  ".join(parts).rstrip()

    return "\n".join([line([h for _, h, _ in columns])] + [line(c) for c in cells])


def write_json(path, obj):
    """Writes ``obj`` as indented JSON (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return str(path)


def readable_axes(ax):
    """Plain-number tick labels on log axes, and a linear y axis where the values span
    less than a factor of 3 (a log axis over 1.0-1.3 GB only crowds its labels)."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ys = [y for line in ax.get_lines() for y in line.get_ydata()]
    if ys and min(ys) > 0 and max(ys) / min(ys) < 3:
        ax.set_yscale("linear")
    for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
        if scale == "log":
            fmt = ScalarFormatter()
            fmt.set_scientific(False)
            axis.set_major_formatter(fmt)
            axis.set_minor_formatter(NullFormatter())


def loglog_plot(series, path, panels, xlabel, title=None):
    """Log-log line plots, one panel per measured quantity, one line per series.

    A quantity whose values span less than a factor of 3 gets a linear axis instead
    (:func:`readable_axes`).

    Arguments
    ---------
    series : dict
        ``label -> list of dict`` (points with the keys used below).
    path : str or os.PathLike
        PNG file to write.
    panels : list of tuple
        ``(x key, y key, panel title, y label)`` per panel.
    xlabel : str
        Label of the x axes.
    title : str, optional
        Figure title (e.g. the machine).

    Returns
    -------
    str
        The PNG written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    for ax, (xk, yk, ptitle, ylabel) in zip(axes[0], panels):
        for label, pts in sorted(series.items()):
            pts = sorted((p for p in pts if p.get(yk) is not None and p.get(xk)),
                         key=lambda p: p[xk])
            if not pts:
                continue
            ax.loglog([p[xk] for p in pts], [max(p[yk], 1e-6) for p in pts], marker="o",
                      ms=4, label=label)
        readable_axes(ax)
        ax.set_title(ptitle)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
