"""Where a transcription's time goes on CPU: ``torch.profiler`` over one pass.

Builds (once, into ``--models``) the random-weight wav2vec2-base teacher and BiMamba2
student that ``cald-bench speed`` measures, transcribes ``--minutes`` of synthetic audio
once untimed, once timed and once under the profiler, and prints the operators by self
time and the matrix products and convolutions by input shape (the profile in
docs/performance.md, "Where the time goes")::

    .venv/bin/python tools/profile_cpu.py student one-pass --minutes 1
    .venv/bin/python tools/profile_cpu.py teacher windowed --minutes 1
"""

import argparse
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from cald_speech.allocator import tune_allocator
from cald_speech.bench.speed import build_shape_models, synthetic_audio
from cald_speech.inference import Transcriber

HEAVY = ("mkldnn::_linear_pointwise", "aten::mkldnn_convolution", "aten::addmm")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("system", choices=["teacher", "student"])
    p.add_argument("mode", choices=["one-pass", "windowed"])
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--models", default="results/profile_models")
    args = p.parse_args()
    tune_allocator()
    folder = Path(args.models)
    if not (folder / args.system / "config.json").is_file():
        build_shape_models("wav2vec2-base", folder, mixer="bimamba2")
    asr = Transcriber.from_pretrained(str(folder / args.system), window_s=30.0, overlap_s=2.0)
    asr.transcribe_waveform(synthetic_audio(10.0, seed=1), mode=args.mode, progress=False)
    wav = synthetic_audio(60.0 * args.minutes)
    start = time.perf_counter()
    asr.transcribe_waveform(wav, mode=args.mode, progress=False)
    print(f"{args.system} {args.mode}, {args.minutes:g} min: "
          f"{time.perf_counter() - start:.2f} s without the profiler")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        asr.transcribe_waveform(wav, mode=args.mode, progress=False)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    heavy = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in HEAVY]
    for e in sorted(heavy, key=lambda e: -e.self_cpu_time_total)[:15]:
        print(f"{e.key:28s} {e.count:4d} calls {e.self_cpu_time_total / 1e3:8.0f} ms  "
              f"{e.input_shapes}")


if __name__ == "__main__":
    main()
