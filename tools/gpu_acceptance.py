"""Helpers of ``tools/gpu_acceptance.sh``: dependencies, machine, corpus, results table.

::

    python tools/gpu_acceptance.py deps                  # what is missing (exit 1 if any)
    python tools/gpu_acceptance.py requirements          # the pip requirement lines
    python tools/gpu_acceptance.py env OUT.json          # the machine and the versions
    python tools/gpu_acceptance.py corpus DIR [--items N]
    python tools/gpu_acceptance.py model-config FILE [--tiny]
    python tools/gpu_acceptance.py junit XML OUT.json    # pytest's JUnit XML -> JSON
    python tools/gpu_acceptance.py recipe RUN_DIR OUT.json --label L --seconds S
    python tools/gpu_acceptance.py report WORK OUT_DIR   # gpu_summary.json + gpu_acceptance.md

Targets checked by ``report`` (on a GPU; a dry run on CPU reports them, unjudged): the
fused scan at least 10x the PyTorch path at T = 30,000 (forward, C = 768); the one-pass
student at least 5x the one-pass teacher at 60 minutes and faster than the windowed
teacher; the one-pass student's peak GPU memory at 60 minutes at most 8 GiB.
"""

import argparse
import importlib
import importlib.metadata as md
import json
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

#: What the project needs beyond torch and triton, as pip requirements (``setup.py``'s
#: pins); mamba-ssm is installed without its dependencies (the Triton SSD path needs
#: only torch, triton, einops and packaging).
REQUIREMENTS = [
    "speechbrain==1.1.2", "hyperpyyaml>=1.2", "transformers>=5.24,<5.25", "torchaudio==2.11.0",
    "safetensors>=0.4", "sentencepiece>=0.2", "jiwer>=3.0", "soundfile>=0.12",
    "tqdm>=4.60", "einops", "packaging", "pytest>=8",
]
#: Imported to check an install: (module, distribution for the message).
MODULES = [("speechbrain", "speechbrain"), ("hyperpyyaml", "hyperpyyaml"),
           ("transformers", "transformers"), ("torchaudio", "torchaudio"),
           ("safetensors", "safetensors"), ("sentencepiece", "sentencepiece"),
           ("jiwer", "jiwer"), ("soundfile", "soundfile"), ("tqdm", "tqdm"),
           ("einops", "einops"), ("packaging", "packaging"), ("pytest", "pytest")]
TEXTS = ["A CAT SAT", "THE DOG RAN HOME", "NO", "YES I DO", "IT IS ME", "GO HOME NOW"]


def missing_dependencies():
    """[(distribution, why)] of what this Python lacks for the acceptance run."""
    missing = []
    for module, dist in MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure is a missing piece
            missing.append((dist, f"{type(exc).__name__}: {exc}"))
    try:
        tv = md.version("transformers")
        if not tv.startswith("5.24."):
            missing.append(("transformers>=5.24,<5.25", f"found {tv}"))
    except md.PackageNotFoundError:
        pass
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from cald_speech.mixers.ops.fused import load_kernel

        kernel = load_kernel("ssd")
        if not kernel.available:
            missing.append(("mamba-ssm (Triton SSD kernel)", kernel.origin))
    except Exception as exc:  # noqa: BLE001
        missing.append(("cald_speech", f"{type(exc).__name__}: {exc}"))
    return missing


def machine():
    """The machine and the versions that matter, as a dict."""
    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available()}
    for dist in ("triton", "transformers", "speechbrain", "mamba-ssm", "causal-conv1d"):
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            info[dist] = None
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["capability"] = list(torch.cuda.get_device_capability())
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        try:
            from cald_speech.inference.precision import bf16_native

            info["bf16_native"] = bf16_native("cuda")
        except Exception:  # noqa: BLE001
            info["bf16_native"] = None
    try:
        from cald_speech.mixers.ops.fused import load_kernel

        info["ssd_kernel"] = load_kernel("ssd").origin
    except Exception as exc:  # noqa: BLE001
        info["ssd_kernel"] = f"{type(exc).__name__}: {exc}"
    return info


def write_corpus(folder, items):
    """A LibriSpeech-layout corpus of noise-and-tone utterances (train, dev, test)."""
    import numpy as np
    import soundfile as sf

    for split, spk, n in (("train-clean-100", 1, items), ("dev-clean", 2, 4),
                          ("test-clean", 3, 4)):
        rng = np.random.default_rng(spk)
        chap = Path(folder) / split / str(spk) / "10"
        chap.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(n):
            uid = f"{spk}-10-{i:04d}"
            t = np.arange(16000 + 1600 * (i % 10)) / 16000
            wav = 0.1 * np.sin(2 * np.pi * (200 + 50 * (i % 7)) * t)
            wav += 0.05 * rng.standard_normal(t.size)
            sf.write(chap / f"{uid}.flac", wav.astype("float32"), 16000)
            lines.append(f"{uid} {TEXTS[i % len(TEXTS)]}")
        (chap / f"{spk}-10.trans.txt").write_text("\n".join(lines) + "\n")


#: The recipe's model: 8 heads of 64 (the fused kernel's comfortable layout), a
#: wav2vec2-style group-norm CNN; ``--tiny`` for the dry run on CPU.
MODEL = ("hidden_size: 512\nnum_hidden_layers: 4\nnum_attention_heads: 8\n"
         "intermediate_size: 2048\nconv_dim: [256, 256, 256, 256, 256, 256, 256]\n"
         "conv_stride: [5, 2, 2, 2, 2, 2, 2]\nconv_kernel: [10, 3, 3, 3, 3, 2, 2]\n"
         "feat_extract_norm: group\nnum_conv_pos_embeddings: 64\n"
         "num_conv_pos_embedding_groups: 16\nmask_time_prob: 0.05\nmask_time_length: 5\n")
TINY = ("hidden_size: 32\nnum_hidden_layers: 2\nnum_attention_heads: 2\n"
        "intermediate_size: 64\nconv_dim: [16, 16]\nconv_stride: [5, 4]\nconv_kernel: [10, 4]\n"
        "num_conv_pos_embeddings: 8\nnum_conv_pos_embedding_groups: 2\n"
        "feat_extract_norm: layer\ndo_stable_layer_norm: true\nmask_time_prob: 0.0\n")


def junit(xml_path, out):
    """pytest's JUnit XML as {passed, failed, skipped, tests: [{name, outcome, ...}]}."""
    tests = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        outcome, detail = "passed", None
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "failed" if tag != "skipped" else "skipped"
                detail = (node.get("message") or "")[:500]
        tests.append({"name": f"{case.get('classname')}::{case.get('name')}",
                      "outcome": outcome, "time_s": float(case.get("time", 0)),
                      "detail": detail})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "skipped")}
    return _write(out, {**counts, "tests": tests})


def recipe(run_dir, out, label, seconds):
    """What a recipe run shows: updates, loss terms of its last step, time per update."""
    run_dir = Path(run_dir)
    steps = [json.loads(x) for x in (run_dir / "steps.jsonl").read_text().splitlines()]
    log = (run_dir / "log.txt").read_text(errors="replace") if (run_dir / "log.txt").is_file() \
        else ""
    fused = [line.split("SSD scan: ", 1)[1] for line in log.splitlines() if "SSD scan: " in line]
    last = steps[-1] if steps else {}
    results = {}
    for f in sorted(run_dir.glob("wer_*.json")):
        results[f.stem[4:]] = json.loads(f.read_text())
    updates = last.get("step", 0)
    return _write(out, {"label": label, "updates": updates, "seconds": seconds,
                        "seconds_per_update": seconds / updates if updates else None,
                        "last_step": last, "ssd_path": fused[:1], "results": results,
                        "finite": all(isinstance(v, (int, float)) and v == v
                                      for k, v in last.items() if k not in ("time",))})


def _rows(path):
    return json.loads(Path(path).read_text())["results"] if Path(path).is_file() else []


def targets(mixers, speed, gpu):
    """The acceptance targets, measured; ``passed`` is None where not judged."""
    out = []

    def add(name, value, goal, ok):
        out.append({"target": name, "value": value, "goal": goal,
                    "passed": (bool(ok) if gpu and value is not None else None)})

    t30 = {r["impl"]: r for r in mixers if r.get("mixer") == "bimamba2"
           and r.get("mode") == "fwd" and r.get("T") == 30000 and r.get("status") == "ok"}
    ratio = (t30["torch"]["time_s"] / t30["fused"]["time_s"]
             if {"fused", "torch"} <= set(t30) else None)
    add("fused scan vs PyTorch path, BiMamba2 fwd, T = 30,000", ratio, ">= 10x",
        ratio is not None and ratio >= 10)
    by = {(r["system"], r["minutes"]): r for r in speed if r.get("status") == "ok"}
    top = max((r["minutes"] for r in speed), default=None)
    st = by.get(("student-onepass", top))
    t1, tw = by.get(("teacher-onepass", top)), by.get(("teacher-windowed", top))
    vs_one = t1["time_s"] / st["time_s"] if st and t1 else None
    vs_win = tw["time_s"] / st["time_s"] if st and tw else None
    add(f"one-pass student vs one-pass teacher at {top} min", vs_one, ">= 5x",
        vs_one is not None and vs_one >= 5)
    add(f"one-pass student vs windowed teacher at {top} min", vs_win, "> 1x",
        vs_win is not None and vs_win > 1)
    peak = st.get("cuda_peak_mb") if st else None
    add(f"one-pass student peak GPU memory at {top} min (MiB)", peak, "<= 8192",
        peak is not None and peak <= 8192)
    return out


def report(work, out_dir):
    """Collects the step results into ``gpu_summary.json`` and ``gpu_acceptance.md``."""
    work, out_dir = Path(work), Path(out_dir)
    env = json.loads((out_dir / "gpu_env.json").read_text())
    gpu = bool(env.get("cuda_available"))
    steps = [dict(zip(("step", "status", "seconds"), line.split("\t")))
             for line in (work / "steps.tsv").read_text().splitlines()]
    mixers, speed = _rows(out_dir / "gpu_mixers.json"), _rows(out_dir / "gpu_speed.json")
    goals = targets(mixers, speed, gpu)
    summary = {"machine": env, "dry_run": not gpu, "steps": steps, "targets": goals}
    _write(out_dir / "gpu_summary.json", summary)
    lines = [f"GPU acceptance on {', '.join(env.get('gpus') or ['CPU (dry run)'])}, "
             f"torch {env['torch']}, triton {env.get('triton')}, SSD kernel: "
             f"{env.get('ssd_kernel')}", "", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in steps]
    lines += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    for g in goals:
        v = g["value"]
        shown = "-" if v is None else f"{v:.3g}"
        met = {True: "yes", False: "NO", None: "not judged"}[g["passed"]]
        lines.append(f"| {g['target']} | {shown} | {g['goal']} | {met} |")
    (out_dir / "gpu_acceptance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = [s for s in steps if not s["status"].startswith("ok")]
    failed += [g for g in goals if g["passed"] is False]
    return 1 if failed else 0


def _write(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("deps")
    sub.add_parser("requirements")
    sub.add_parser("env").add_argument("out")
    c = sub.add_parser("corpus")
    c.add_argument("folder")
    c.add_argument("--items", type=int, default=48)
    m = sub.add_parser("model-config")
    m.add_argument("file")
    m.add_argument("--tiny", action="store_true")
    j = sub.add_parser("junit")
    j.add_argument("xml")
    j.add_argument("out")
    r = sub.add_parser("recipe")
    r.add_argument("run_dir")
    r.add_argument("out")
    r.add_argument("--label", required=True)
    r.add_argument("--seconds", type=float, required=True)
    rep = sub.add_parser("report")
    rep.add_argument("work")
    rep.add_argument("out_dir")
    a = p.parse_args(argv)
    if a.cmd == "deps":
        missing = missing_dependencies()
        for dist, why in missing:
            print(f"missing: {dist} ({why})")
        return 1 if missing else 0
    if a.cmd == "requirements":
        print("\n".join(REQUIREMENTS))
        return 0
    if a.cmd == "env":
        return _write(a.out, machine())
    if a.cmd == "corpus":
        write_corpus(a.folder, a.items)
        return 0
    if a.cmd == "model-config":
        Path(a.file).write_text(TINY if a.tiny else MODEL)
        return 0
    if a.cmd == "junit":
        return junit(a.xml, a.out)
    if a.cmd == "recipe":
        return recipe(a.run_dir, a.out, a.label, a.seconds)
    return report(a.work, a.out_dir)


if __name__ == "__main__":
    sys.exit(main())
