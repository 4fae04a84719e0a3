"""Time and peak memory of each token mixer versus softmax attention, as T grows.

``cald-bench mixers`` measures every registered mixer against
scaled-dot-product attention for T from 250 to 30,000 frames (5 s to 10 min of audio at
50 frames/s), hidden sizes 768 and 1024, forward (under ``torch.no_grad``) and
forward+backward, on CPU and, when present, CUDA (BiMamba2 with the fused kernels and
with pure PyTorch). It prints a table, writes ``mixers.json`` and one PNG per device
(log-log time and peak memory versus T), and records the machine and its load.

How it measures:

- every configuration, and the throughput measurement, runs in a **fresh subprocess**,
  so one configuration's memory or allocator state cannot leak into the next, and a
  crash (e.g. out of memory) is recorded rather than fatal;
- time: one untimed warm-up pass, then ``--repeats`` timed passes; the fastest is
  reported and used for the speed-ups (other load only ever adds time); the median is
  kept in the JSON as ``time_median_s``;
- peak memory on CPU: the process's resident-set high-water mark (``VmHWM``) is reset
  (``/proc/self/clear_refs``) once the module and input exist, and read after the
  warm-up pass; the reported number is that peak minus the resident set before the
  pass, i.e. the extra memory the pass needed (activations, workspaces, gradients).
  Where the reset is not allowed, ``ru_maxrss`` is used instead (an upper bound that
  can include earlier peaks; the JSON says which). The allocator may keep freed
  blocks resident, so this reads somewhat high, most visibly for short inputs. On CUDA:
  ``torch.cuda.max_memory_allocated`` minus the memory allocated before the pass;
- a configuration whose time or memory, extrapolated from the two previous lengths
  (growth exponent between 1 and 2), would exceed ``--time-cap`` / ``--mem-cap-gb`` is
  reported as skipped, not run;
- the chunked SSD scan's achieved GFLOP/s (its matrix-multiply FLOPs over its time) is
  measured next to a plain fp32 matmul's GFLOP/s in the same run (and, on CPU, next to
  the oneDNN linear that inference uses for the projections);
- forward passes run as inference runs them (:func:`~cald_speech.inference.precision.
  compute_precision`: on CPU, oneDNN for the linear layers of every mixer alike).

Other processes on the machine change the timings; the load average before and after
is recorded with the results.

Example
-------
>>> args = parse_args(["--quick", "--mixers", "bimamba2"])
>>> [c["T"] for c in plan(args)][:3]
[250, 1000, 4000]
"""

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from cald_speech.allocator import tune_allocator
from cald_speech.bench.options import DEFAULT_LENGTHS, DEFAULT_MIXERS
from cald_speech.bench.options import mixers_parser as build_parser
from cald_speech.bench.report import machine_info, machine_line, ram_gb, reset_hwm, status_mb
from cald_speech.cli import fail, parse
from cald_speech.errors import ConfigError
from cald_speech.inference.precision import (
    OneDNNLinear,
    compute_precision,
    onednn_linear_available,
)

SSM_MIXERS = ("bimamba2", "bimamba2_shared")
QUICK = dict(lengths=[250, 1000, 4000], hidden=[768], repeats=3, modes=["fwd"])


def parse_args(argv=None):
    """Command-line options (see ``--help``), their defaults completed."""
    return complete_args(build_parser().parse_args(argv))


def complete_args(args):
    """Fills in the defaults that depend on ``--quick`` and on the machine."""
    preset = QUICK if args.quick else {}
    args.lengths = sorted(args.lengths or preset.get("lengths", DEFAULT_LENGTHS))
    args.hidden = args.hidden or preset.get("hidden", [768, 1024])
    args.modes = args.modes or preset.get("modes", ["fwd", "fwdbwd"])
    args.repeats = args.repeats or preset.get("repeats", 3)
    mixers = args.mixers or DEFAULT_MIXERS
    args.mixers = ["attention"] + [m for m in mixers if m != "attention"]
    if args.devices is None:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return args


def _impls(mixer, device):
    if device == "cuda" and mixer in SSM_MIXERS:
        from cald_speech.mixers.ops.ssd import fused_scan_available

        return (["fused"] if fused_scan_available() else []) + ["torch"]
    return ["torch"] if mixer in SSM_MIXERS else ["-"]


def mixer_options(mixer, args, T, impl):
    """Build options of one mixer in the benchmark."""
    if mixer in SSM_MIXERS:
        cfg = {"d_state": args.d_state, "chunk_size": args.chunk_size}
        if impl != "-":
            cfg["impl"] = impl
        return cfg
    if mixer == "linformer":
        return {"max_len": max(args.lengths)}
    return {}


def plan(args):
    """The list of configurations to run, in order (shortest T first per series)."""
    out = []
    for device in args.devices:
        for hidden in args.hidden:
            for mode in args.modes:
                for mixer in args.mixers:
                    for impl in _impls(mixer, device):
                        for T in args.lengths:
                            out.append(dict(device=device, hidden=hidden, heads=hidden // 64,
                                            mode=mode, mixer=mixer, impl=impl, T=T))
    return out


# ----------------------------------------------------------------- child process
def run_one(cfg, args):
    """Measures one configuration in this process; returns a result dict."""
    from cald_speech.mixers import build_mixer

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    opts = mixer_options(cfg["mixer"], args, cfg["T"], cfg["impl"])
    mixer = build_mixer(cfg["mixer"], cfg["hidden"], cfg["heads"], **opts).to(device)
    x = torch.randn(args.batch, cfg["T"], cfg["hidden"], device=device)
    backward = cfg["mode"] == "fwdbwd"
    if backward:
        x.requires_grad_(True)
    else:
        mixer.eval()

    def step():
        if backward:
            mixer.zero_grad(set_to_none=True)
            x.grad = None
            mixer(x).float().square().mean().backward()
        else:  # as inference runs it (oneDNN linears on CPU, cald_speech.inference)
            with torch.no_grad(), compute_precision("fp32", device):
                mixer(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        method = "cuda.max_memory_allocated"
    else:
        exact = reset_hwm()
        before = status_mb("VmRSS") * 2**20
        method = "VmHWM-VmRSS" if exact else "ru_maxrss-VmRSS (upper bound)"
    t0 = time.perf_counter()
    step()  # warm-up, and the pass whose peak memory is recorded
    warm = time.perf_counter() - t0
    if cuda:
        peak = torch.cuda.max_memory_allocated() - before
    elif method.startswith("VmHWM"):
        peak = status_mb("VmHWM") * 2**20 - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    times = []
    for _ in range(args.repeats if warm < args.time_cap else 0):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times = times or [warm]
    return dict(cfg, status="ok", time_s=min(times), time_median_s=statistics.median(times),
                warmup_s=warm, peak_mem_mb=max(peak, 0) / 2**20, mem_method=method,
                threads=torch.get_num_threads(), options=opts)


# ----------------------------------------------------------------- throughput
def _gflops(fn, flops, repeats=5):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    t = min(ts)
    return flops / t / 1e9, t


def ssd_flops(T, heads, headdim, d_state, ngroups, chunk):
    """Matrix-multiply FLOPs of the chunked scan (C B^T, intra-chunk, states, output).

    Example
    -------
    >>> ssd_flops(64, 1, 1, 1, 1, 64)
    16640
    """
    return 2 * T * (chunk * d_state * ngroups + chunk * heads * headdim
                    + 2 * d_state * heads * headdim)


def _scan_decays(kind, T, h, n, dev, gen):
    """``dt`` (1, T, h) and ``A`` (h,) for the scan's throughput, with its dt_bias.

    ``"init"``: as a freshly initialised Mamba2 layer gives them (its ``dt_bias`` and
    ``A_log``; the raw ``dt`` of its input projection on unit-variance input, standard
    deviation 1/sqrt(3)). ``"steep"``: raw ``dt`` ~ N(0, 1) and ``A`` in [-9, -1], so
    that every head decays by far more than the factored kernel's range in a chunk.
    """
    from cald_speech.mixers.mamba2 import _SSMCore

    if kind == "init":
        with torch.random.fork_rng():
            torch.manual_seed(0)
            core = _SSMCore(h * 64, d_state=n, headdim=64)
        dt = torch.randn(1, T, h, device=dev, generator=gen) / math.sqrt(3)
        return dt, -torch.exp(core.A_log.detach()).to(dev), core.dt_bias.detach().to(dev)
    dt = torch.randn(1, T, h, device=dev, generator=gen)
    return dt, -torch.rand(h, device=dev, generator=gen) * 8 - 1, None


def throughput(args, device="cpu"):
    """GFLOP/s of the chunked SSD scan and of a plain matmul, measured now.

    The scan runs on the decays of a freshly initialised layer (``ssd_torch``) and, on
    CPU, on steep decays (``ssd_torch_steep``: the exact-decay kernel); each record
    says how many heads were steep.
    """
    from cald_speech.mixers.ops.ssd import TORCH_CHUNK_SIZE, ssd_scan
    from cald_speech.mixers.ops.ssd_nograd import steep_heads

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(device)
    T, h, p, n = 8192, 12, 64, args.d_state
    chunk = args.chunk_size or TORCH_CHUNK_SIZE
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, T, h, p, device=dev, generator=g)
    B = torch.randn(1, T, 1, n, device=dev, generator=g)
    C = torch.randn(1, T, 1, n, device=dev, generator=g)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = {}
    runs = [("torch", "init")] + ([("torch", "steep")] if dev.type == "cpu" else []) + (
        [("fused", "init")] if dev.type == "cuda" and "fused" in _impls("bimamba2", "cuda")
        else [])
    with torch.no_grad():
        for impl, kind in runs:
            dt, A, dt_bias = _scan_decays(kind, T, h, n, dev, g)

            def scan(impl=impl, dt=dt, A=A, dt_bias=dt_bias):
                ssd_scan(x, dt, A, B, C, chunk_size=chunk if impl == "torch" else None,
                         dt_bias=dt_bias, dt_softplus=True, impl=impl)
                sync()
            c = chunk if impl == "torch" else 256
            gf, t = _gflops(scan, ssd_flops(T, h, p, n, 1, c))
            dA = torch.nn.functional.softplus(dt + (0 if dt_bias is None else dt_bias)) * A
            name = f"ssd_{impl}" + ("_steep" if kind == "steep" else "")
            out[name] = dict(gflops=gf, time_s=t, T=T, heads=h, headdim=p, d_state=n,
                             chunk=c, decays=kind,
                             steep_heads=int(steep_heads(dA[:, : T // c * c].cpu(), c).sum()))
        a = torch.randn(T, 768, device=dev, generator=g)
        w = torch.randn(768, 768 * 2, device=dev, generator=g)

        def mm():
            torch.matmul(a, w)
            sync()

        gf, t = _gflops(mm, 2 * T * 768 * 768 * 2)
        out["matmul"] = dict(gflops=gf, time_s=t, shape=[T, 768, 1536])
        if dev.type == "cpu" and onednn_linear_available():
            lin = OneDNNLinear()
            wt = w.t().contiguous()

            def onednn():
                with lin:
                    torch.nn.functional.linear(a, wt)

            gf, t = _gflops(onednn, 2 * T * 768 * 768 * 2)
            out["linear_onednn"] = dict(gflops=gf, time_s=t, shape=[T, 768, 1536])
    return out


# ----------------------------------------------------------------- machine
# ----------------------------------------------------------------- driver
def _predict(series, T):
    """Extrapolates (time, memory) to T from the last two ok results of a series."""
    ok = [r for r in series if r["status"] == "ok"]
    if not ok:
        return None, None
    last = ok[-1]
    if len(ok) == 1:
        k_t = k_m = 2.0  # pessimistic until the growth is known
    else:
        prev = ok[-2]
        span = max(last["T"] / prev["T"], 1.0 + 1e-9)

        def expo(a, b):
            if a <= 0 or b <= 0:
                return 2.0
            return min(max(math.log(b / a) / math.log(span), 1.0), 2.0)

        k_t = expo(prev["time_s"], last["time_s"])
        k_m = expo(prev["peak_mem_mb"] + 1, last["peak_mem_mb"] + 1)
    ratio = T / last["T"]
    return last["time_s"] * ratio**k_t, (last["peak_mem_mb"] + 1) * ratio**k_m


def _mem_cap_mb(args, device):
    if args.mem_cap_gb:
        return args.mem_cap_gb * 1024
    if device == "cuda":
        return 0.8 * torch.cuda.get_device_properties(0).total_memory / 2**20
    ram = ram_gb()
    return 0.6 * ram * 1024 if ram else float("inf")


def _run_child(cfg, args, argv):
    cmd = [sys.executable, "-m", "cald_speech.bench.mixers", *argv, "--child", json.dumps(cfg)]
    limit = args.time_cap * (args.repeats + 2) + 120
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return dict(cfg, status="timeout", reason=f"over {limit:.0f} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return dict(cfg, status="failed", reason=tail[0][:200])
    return json.loads(lines[-1])


def run(args, argv):
    """Runs the plan, returning the list of results (each a dict)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(x, **_):
            return x
    results = []
    series = {}
    configs = plan(args)
    for cfg in tqdm(configs, desc="mixer bench", unit="cfg"):
        key = tuple(cfg[k] for k in ("device", "hidden", "mode", "mixer", "impl"))
        done = series.setdefault(key, [])
        if done and done[-1]["status"] != "ok":
            res = dict(cfg, status="skipped", reason=f"shorter T {done[-1]['status']}")
        else:
            t_pred, m_pred = _predict(done, cfg["T"])
            cap_mb = _mem_cap_mb(args, cfg["device"])
            if t_pred is not None and t_pred > args.time_cap:
                res = dict(cfg, status="skipped",
                           reason=f"predicted {t_pred:.0f} s > time cap {args.time_cap:.0f} s")
            elif m_pred is not None and m_pred > cap_mb:
                res = dict(cfg, status="skipped",
                           reason=f"predicted {m_pred:.0f} MB > memory cap {cap_mb:.0f} MB")
            else:
                res = _run_child(cfg, args, argv)
        done.append(res)
        results.append(res)
    _add_speedups(results)
    return results


def _add_speedups(results):
    ref = {(r["device"], r["hidden"], r["mode"], r["T"]): r["time_s"]
           for r in results if r["mixer"] == "attention" and r["status"] == "ok"}
    for r in results:
        t_ref = ref.get((r["device"], r["hidden"], r["mode"], r["T"]))
        if r["status"] == "ok" and t_ref:
            r["speedup_vs_attention"] = t_ref / r["time_s"]


def format_table(results):
    """A plain-text table of the results."""
    head = f"{'device':6} {'impl':5} {'mixer':17} {'C':>5} {'mode':6} {'T':>6} " \
           f"{'time ms':>10} {'peak MB':>9} {'vs attn':>8}  status"
    lines = [head, "-" * len(head)]
    for r in results:
        if r["status"] == "ok":
            sp = r.get("speedup_vs_attention")
            lines.append(
                f"{r['device']:6} {r['impl']:5} {r['mixer']:17} {r['hidden']:5d} {r['mode']:6} "
                f"{r['T']:6d} {1e3 * r['time_s']:10.1f} {r['peak_mem_mb']:9.1f} "
                f"{(f'{sp:.2f}x' if sp else '-'):>8}  ok"
            )
        else:
            lines.append(
                f"{r['device']:6} {r['impl']:5} {r['mixer']:17} {r['hidden']:5d} {r['mode']:6} "
                f"{r['T']:6d} {'-':>10} {'-':>9} {'-':>8}  {r['status']}: {r.get('reason', '')}"
            )
    return "\n".join(lines)


def targets(results):
    """The issue's performance checks, where the results contain them."""
    out = []
    for r in results:
        if not (r["mixer"] == "bimamba2" and r["mode"] == "fwd" and r["status"] == "ok"
                and r["hidden"] == 768 and r["T"] == 30000):
            continue
        sp = r.get("speedup_vs_attention")
        line = f"{r['device']}/{r['impl']}: BiMamba2 fwd T=30000 C=768: "
        line += f"{sp:.1f}x faster than attention (target >= 5x)" if sp else "no attention"
        short = [s for s in results if s["status"] == "ok" and s["T"] == 7500 and all(
            s[k] == r[k] for k in ("device", "impl", "mixer", "mode", "hidden"))]
        if short:
            ratio = r["time_s"] / (4 * short[0]["time_s"])
            line += f"; t(30000) / (4 t(7500)) = {ratio:.2f} (target <= 1.3)"
        out.append(line)
    return out


def plot(results, out_dir):
    """One PNG per device: log-log time and peak memory vs T, per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for device in sorted({r["device"] for r in results}):
        rows = [r for r in results if r["device"] == device and r["status"] == "ok"]
        modes = sorted({r["mode"] for r in rows})
        if not rows:
            continue
        fig, axes = plt.subplots(len(modes), 2, figsize=(12, 4.5 * len(modes)), squeeze=False)
        for i, mode in enumerate(modes):
            series = {}
            for r in rows:
                if r["mode"] == mode:
                    label = f"{r['mixer']}" + (f" [{r['impl']}]" if r["impl"] != "-" else "")
                    label += f" C={r['hidden']}"
                    series.setdefault(label, []).append(r)
            for label, pts in sorted(series.items()):
                pts.sort(key=lambda r: r["T"])
                ts = [r["T"] for r in pts]
                style = "--" if "C=1024" in label else "-"
                axes[i][0].loglog(ts, [r["time_s"] for r in pts], style, marker="o", ms=3,
                                  label=label)
                axes[i][1].loglog(ts, [max(r["peak_mem_mb"], 1e-3) for r in pts], style,
                                  marker="o", ms=3, label=label)
            axes[i][0].set_title(f"{device}, {mode}: time per pass")
            axes[i][0].set_ylabel("seconds")
            axes[i][1].set_title(f"{device}, {mode}: peak extra memory")
            axes[i][1].set_ylabel("MB")
            for ax in axes[i]:
                ax.set_xlabel("T (frames, 50 per second of audio)")
                ax.grid(True, which="both", alpha=0.3)
            axes[i][1].legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        path = Path(out_dir) / f"mixers_{device}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(str(path))
    return paths


def main(argv=None):
    """Entry point of ``cald-bench mixers``; returns the exit status (:mod:`cald_speech.cli`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, status = parse(build_parser(), argv)
    if args is None:
        return status
    args.argv = argv
    return command(args)


def command(args):
    """``cald-bench mixers`` on parsed arguments (``args.argv``: the command line, passed
    on to the child processes)."""
    argv = args.argv
    args = complete_args(args)
    try:
        allocator = tune_allocator()
    except ConfigError as exc:
        return fail("cald-bench mixers", exc)
    if args.child:
        cfg = json.loads(args.child)
        if "throughput" in cfg:
            print(json.dumps(throughput(args, cfg["throughput"])))
        else:
            print(json.dumps(dict(run_one(cfg, args), allocator=allocator["mode"])))
        return 0
    child_argv = [a for a in argv if a != "--quick"]
    for flag, val in (("--repeats", args.repeats), ("--time-cap", args.time_cap)):
        child_argv += [flag, str(val)]
    if args.lengths:
        child_argv += ["--lengths", *map(str, args.lengths)]
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = dict(machine_info(), allocator=allocator)
    print(machine_line(machine, out_dir / "mixers.json"))
    # in a child process too: the parent stays small, whatever the throughput runs
    flops = {dev: _run_child({"throughput": dev}, args, child_argv) for dev in args.devices}
    for dev, res in flops.items():
        if "status" in res:  # the child failed
            print(f"{dev} throughput: {res['status']}: {res.get('reason', '')}")
            continue
        for name, r in res.items():
            steep = (f", {r['steep_heads']} of {r['heads']} heads steep"
                     if "steep_heads" in r else "")
            print(f"{dev} {name}: {r['gflops']:.1f} GFLOP/s ({1e3 * r['time_s']:.1f} ms"
                  f"{steep})")
    results = run(args, child_argv)
    machine["load_avg_after"] = list(os.getloadavg())
    table = format_table(results)
    print(table)
    checks = targets(results)
    for line in checks:
        print(line)
    options = {k: v for k, v in vars(args).items() if k not in ("child", "argv")}
    payload = dict(machine=machine, throughput=flops, args=options, results=results,
                   targets=checks)
    json_path = out_dir / "mixers.json"
    json_path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {json_path}")
    if not args.no_plot:
        for path in plot(results, out_dir):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
