"""Every option a recipe accepts works in its documented command-line form.

Table-driven over every recipe's hparams files: each SpeechBrain run option (the ones
``train.py --help`` lists) and each plain option of the file, given a value of its type,
is read with that type or refused in one line; the mode is checked before anything is
written; and a tiny run shows the options that change training (a step limit, a
mid-epoch checkpoint interval given alone, a re-run of a finished recipe, --test_only).
"""

import dataclasses
import os
import re
import typing
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from speechbrain.utils.run_opts import RunOptions

from cald_speech.errors import ConfigError
from cald_speech.tasks.asr.recipe import ASR_KEYS, AsrTask, run_asr
from cald_speech.tasks.intent.recipe import INTENT_KEYS
from cald_speech.tasks.layers.recipe import LAYER_KEYS
from cald_speech.tasks.probe.recipe import PROBE_KEYS
from cald_speech.tasks.recipe import load_recipe_hparams, recipe_entry
from cald_speech.tasks.run_options import REFUSED, RecipeRunOptions

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
#: hparams file -> (keys its recipe reads, required values)
FILES = {
    "LibriSpeech/ASR/hparams/finetune.yaml": (ASR_KEYS, []),
    "LibriSpeech/ASR/hparams/cald.yaml": (ASR_KEYS, []),
    "LibriSpeech/distill/hparams/distill.yaml": (LAYER_KEYS, ["--teacher_source", "t"]),
    "LibriSpeech/probe/hparams/probe.yaml": (PROBE_KEYS, ["--upstream_source", "u"]),
    "SLURP/intent/hparams/finetune.yaml": (INTENT_KEYS, []),
    "SLURP/intent/hparams/cald.yaml": (INTENT_KEYS, []),
}
FIELDS = {f.name: f.type for f in dataclasses.fields(RunOptions)}


@pytest.fixture()
def experiments(monkeypatch):
    """SpeechBrain's experiment folder without its environment survey (pip, git: slow)."""
    import speechbrain as sb

    calls = []

    def create(experiment_directory, **kwargs):
        os.makedirs(experiment_directory, exist_ok=True)
        calls.append(kwargs)

    monkeypatch.setattr(sb, "create_experiment_directory", create)
    return calls


def _run_option_values():
    """``(option, argv values, expected type)`` for every option of SpeechBrain's parser."""
    rows = []
    for action in RecipeRunOptions._create_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag, kind = action.option_strings[0], FIELDS[action.dest]
        if action.nargs == 0:
            rows.append((flag, [], bool))
        elif action.nargs == "*":
            rows.append((flag, ["model"], list))
        elif action.choices:
            rows.append((flag, [action.choices[-1]], str))
        elif action.dest == "device":
            rows.append((flag, ["cpu"], str))
        elif action.dest == "distributed_backend":
            rows.append((flag, ["gloo"], str))
        elif action.dest == "log_config":
            import speechbrain

            rows.append((flag, [str(Path(speechbrain.__file__).parent / "log-config.yaml")],
                         str))
        elif action.dest == "ckpt_interval_minutes":
            rows.append((flag, ["0.5"], float))
        else:
            base = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
            rows.append((flag, ["1.5" if base[0] is float else "2"], base[0]))
    return rows


def _load(tmp_path, name, *extra):
    keys, required = FILES[name]
    out = tmp_path / "out"
    argv = [str(RECIPES / name), "--data_folder", str(tmp_path / "data"),
            "--output_folder", str(out), *required, *extra]
    return load_recipe_hparams(argv, keys, AsrTask().check_mode if "ASR" in name else None)


@pytest.mark.parametrize("flag, values, kind", _run_option_values(),
                         ids=lambda x: x if isinstance(x, str) else "")
def test_every_run_option_of_every_recipe_gets_its_type_or_a_clear_refusal(
        tmp_path, experiments, flag, values, kind):
    dest = flag[2:]
    for name in FILES:
        if dest in REFUSED:
            with pytest.raises(ConfigError, match=rf"^command line: {flag} is not supported "
                                                  r".*; fix: leave it out$"):
                _load(tmp_path / name, name, flag, *values)
            continue
        hp, run_opts = _load(tmp_path / name, name, flag, *values)
        value = run_opts[dest]
        assert isinstance(value, kind) and not (kind is int and isinstance(value, bool)), (
            name, flag, value)
        if dest in ("ckpt_interval_steps", "ckpt_interval_minutes"):
            other = "ckpt_interval_minutes" if dest == "ckpt_interval_steps" else \
                "ckpt_interval_steps"
            assert hp.get(other, 0) == 0, (name, flag)    # the command line's interval wins
        if dest == "log_config":
            assert experiments[-1]["log_config"] == values[0]


@pytest.mark.parametrize("flag, value, message", [
    ("--optimizer_step_limit", "five", "--optimizer_step_limit: invalid int value: 'five'"),
    ("--optimizer_step_limit", "0", "--optimizer_step_limit must be a positive integer"),
    ("--debug_batches", "abc", "--debug_batches: invalid int value: 'abc'"),
    ("--precision", "fp8", "--precision: invalid choice: 'fp8'"),
])
def test_a_bad_run_option_value_is_one_line_before_anything_is_written(tmp_path, experiments,
                                                                       flag, value, message):
    with pytest.raises(ConfigError, match="^command line: .*" + re.escape(message)):
        _load(tmp_path, "LibriSpeech/ASR/hparams/cald.yaml", flag, value)
    assert not (tmp_path / "out").exists()


def test_both_intervals_on_the_command_line_are_one_clear_error(tmp_path, experiments):
    with pytest.raises(ConfigError, match=r"give --ckpt_interval_minutes or "
                                          r"--ckpt_interval_steps, not both \(fix: keep one"):
        _load(tmp_path, "LibriSpeech/ASR/hparams/finetune.yaml", "--ckpt_interval_steps", "3",
              "--ckpt_interval_minutes", "1")


def _plain_options(path):
    """``{key: value}`` of a file's top-level options written as plain YAML values."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([a-z]\w*):\s+([^!#\s][^#]*?)\s*(#.*)?$", line)
        if m and m.group(1) not in ("data_folder",):
            out[m.group(1)] = yaml.safe_load(m.group(2))
    return out


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_plain_option_of_a_file_works_as_key_value(tmp_path, experiments, name):
    options = _plain_options(RECIPES / name)
    assert len(options) > 15
    argv = []
    for key, value in options.items():
        argv += [f"--{key}", yaml.safe_dump(value, default_flow_style=True).strip()
                 .removesuffix("...").strip()]
    hp, _ = _load(tmp_path, name, *argv)
    for key, value in options.items():
        if key in ("model_config", "mixer"):   # fragment files, read
            assert isinstance(hp[key], dict), key
        else:
            assert hp[key] == value, key


@pytest.mark.parametrize("name", ["LibriSpeech/ASR/hparams/cald.yaml",
                                  "LibriSpeech/distill/hparams/distill.yaml",
                                  "SLURP/intent/hparams/cald.yaml"])
def test_mixer_takes_a_name_or_a_fragment_path(tmp_path, experiments, name):
    hp, _ = _load(tmp_path / "a", name, "--mixer", "linformer")
    assert hp["mixer"] == {"name": "linformer"}
    hp, _ = _load(tmp_path / "b", name, "--mixer", "../../../../hparams/mixers/linformer.yaml")
    assert hp["mixer"] == {"name": "linformer"}
    with pytest.raises(ConfigError, match="unknown mixer 'lineformer'; available: .*linformer"):
        _load(tmp_path / "c", name, "--mixer", "lineformer")


@pytest.mark.parametrize("name, mode, runs", [
    ("cald.yaml", "hybrd", "unguided, target, trajectory, waypoint, hybrid"),
    ("finetune.yaml", "hybrid", "finetune"),
])
def test_a_bad_mode_fails_first_and_lists_the_modes_of_that_file(tmp_path, name, mode, runs):
    out = tmp_path / "out"
    argv = [str(RECIPES / "LibriSpeech/ASR/hparams" / name), "--data_folder",
            str(tmp_path), "--output_folder", str(out), "--mode", mode]
    with pytest.raises(SystemExit) as exc:
        recipe_entry(run_asr, argv)
    hint = " (did you mean 'hybrid'?)" if mode == "hybrd" else ""
    assert str(exc.value.code) == (f"error: {name}: unknown mode '{mode}'{hint}"
                                   f"; this file runs: {runs}")
    assert not out.exists()


def test_help_lists_the_file_options_with_their_values_and_the_run_options(capsys):
    with pytest.raises(SystemExit) as exc:
        recipe_entry(run_asr, [str(RECIPES / "LibriSpeech/ASR/hparams/cald.yaml"), "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert re.search(r"^  --ckpt_interval_minutes +15$", out, re.M)
    assert re.search(r"^  --optimizer_step_limit +Number of optimizer steps", out, re.M)
    assert "--jit " not in out and "--feature_cache_folder" in out


# ------------------------------------------------------------------ a tiny run
TINY = """
hidden_size: 32
num_hidden_layers: 2
num_attention_heads: 2
intermediate_size: 64
conv_dim: [16, 16]
conv_stride: [5, 4]
conv_kernel: [10, 4]
num_conv_pos_embeddings: 8
num_conv_pos_embedding_groups: 2
feat_extract_norm: layer
do_stable_layer_norm: true
mask_time_prob: 0.0
"""


def _write_split(root, split, spk, n):
    rng = np.random.default_rng(spk)
    chap = root / split / str(spk) / "10"
    chap.mkdir(parents=True)
    lines = []
    for i in range(n):
        uid = f"{spk}-10-{i:04d}"
        sf.write(chap / f"{uid}.flac",
                 (0.1 * rng.standard_normal(2400 + 400 * i)).astype("float32"), 16000)
        lines.append(f"{uid} {['A CAT', 'THE DOG RAN', 'NO'][i % 3]}")
    (chap / f"{spk}-10.trans.txt").write_text("\n".join(lines) + "\n")


def test_step_limit_interval_rerun_and_test_only_in_a_tiny_run(tmp_path, monkeypatch):
    corpus = tmp_path / "LibriSpeech"
    for split, spk, n in (("train-clean-100", 1, 6), ("dev-clean", 2, 2), ("test-clean", 3, 2)):
        _write_split(corpus, split, spk, n)
    (tmp_path / "tiny.yaml").write_text(TINY)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)          # nothing may land in the working directory
    out = tmp_path / "run"
    argv = [str(RECIPES / "LibriSpeech/ASR/hparams/finetune.yaml"), "--data_folder",
            str(corpus), "--output_folder", str(out), "--model_config",
            str(tmp_path / "tiny.yaml"), "--number_of_epochs", "3", "--batch_size", "2",
            "--device", "cpu", "--warmup_updates", "0", "--total_updates", "10",
            "--optimizer_step_limit", "2", "--ckpt_interval_steps", "1"]
    first = recipe_entry(run_asr, argv)
    assert os.listdir(work) == []
    assert (out / "feature_cache").is_dir()            # the cache is the run's own
    log = (out / "train_log.txt").read_text()
    assert re.findall(r"updates: (\d+)", log)[-1] == "2"   # stopped at the step limit
    assert log.count("split: test-clean") == 1
    second = recipe_entry(run_asr, argv)                     # a finished run, started again
    assert (out / "train_log.txt").read_text() == log        # nothing tested twice
    assert second == first
    third = recipe_entry(run_asr, [*argv, "--test_only"])
    assert third == first and (out / "train_log.txt").read_text() == log
    # another test setting is another test
    recipe_entry(run_asr, [*argv, "--test_only", "--beam_size", "2"])
    assert (out / "train_log.txt").read_text().count("split: test-clean") == 2


@pytest.mark.parametrize("verbose", [False, True])
def test_start_up_notices_only_with_verbose(tmp_path, verbose):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cald_speech.tasks.asr.recipe import ASR_KEYS\n"
        "from cald_speech.tasks.recipe import load_recipe_hparams\n"
        "load_recipe_hparams(sys.argv[1:], ASR_KEYS)\n"
    )
    argv = [str(RECIPES / "LibriSpeech/ASR/hparams/finetune.yaml"), "--data_folder",
            str(tmp_path), "--output_folder", str(tmp_path / "out"),
            *(["--verbose"] if verbose else [])]
    env = {k: v for k, v in os.environ.items()   # as a fresh shell has it
           if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")}
    run = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    try:
        import torchvision  # noqa: F401
    except ImportError:
        assert ("torchvision is not available" in run.stderr) == verbose, run.stderr[-2000:]
