"""GenDistiller and the DistilHuBERT baseline: visibility, generation, padding, files.

Every fast path is checked against something simpler: the KV-cached generation against
the full two-dimensional attention, the fused per-step attention against attention
computed by hand over the flattened (layer, frame) tokens in float64.
"""

import json
import math

import pytest
import torch

from cald_speech.distill.losses import distilhubert_loss
from cald_speech.errors import ConfigError, DataError
from cald_speech.features import enable_feature_input, pad_features
from cald_speech.gendistiller import (
    LayerCausalAttention,
    LayerGenerator,
    LayerStudent,
    build_layer_student,
    load_upstream,
    truncated_encoder,
    upstream_layers,
)
from cald_speech.testing import tiny_teacher

MIXERS = ["attention", "bimamba2"]


def generator(time_mixer, seed=0, steps=3):
    torch.manual_seed(seed)
    opts = {"d_state": 8, "headdim": 8} if time_mixer == "bimamba2" else None
    return LayerGenerator(steps, 16, 12, num_heads=2, depth=2, ffn_size=32,
                          time_mixer=time_mixer, mixer_options=opts, dropout=0.0).double().eval()


def inputs(b=2, t=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(b, t, 16, generator=g, dtype=torch.float64)
    targets = [torch.randn(b, t, 12, generator=g, dtype=torch.float64) for _ in range(3)]
    return enc, torch.ones(b, t, dtype=torch.bool), targets


def test_attention_equals_hand_computed_masked_attention():
    torch.manual_seed(0)
    att = LayerCausalAttention(8, 2).double()
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0]], dtype=torch.bool)
    out, _ = att(x, mask)
    b, s, t, c = x.shape
    qkv = att.qkv(x.reshape(b, s * t, c)).reshape(b, s * t, 3, 2, 4)
    ref = torch.zeros(b, s * t, 2, 4, dtype=torch.float64)
    for i in range(b):
        for h in range(2):
            q, k, v = qkv[i, :, 0, h], qkv[i, :, 1, h], qkv[i, :, 2, h]
            scores = q @ k.T / math.sqrt(4)
            for a in range(s * t):
                for z in range(s * t):
                    if z // t > a // t or not mask[i, z % t]:
                        scores[a, z] = -math.inf
            ref[i, :, h] = torch.softmax(scores, dim=-1) @ v
    ref = att.out_proj(ref.reshape(b, s * t, c)).reshape(b, s, t, c)
    valid = mask[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[valid], ref[valid])


def test_cached_steps_equal_one_pass_over_all_steps():
    torch.manual_seed(0)
    att = LayerCausalAttention(8, 2).double()
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.bool)
    full, _ = att(x, mask)
    cache, steps = None, []
    for k in range(3):
        y, cache = att(x[:, k:k + 1], mask, cache)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("time_mixer", MIXERS)
def test_a_step_sees_only_earlier_steps(time_mixer):
    gen = generator(time_mixer)
    enc, mask, targets = inputs()
    base = gen(enc, mask, targets)
    for k in range(2):  # targets[k] is the input of step k + 1
        moved = [t.clone() for t in targets]
        moved[k] += torch.randn_like(moved[k])
        out = gen(enc, mask, moved)
        for j in range(k + 1):
            torch.testing.assert_close(out[j], base[j], rtol=0, atol=1e-12)
        assert (out[k + 1] - base[k + 1]).abs().max() > 1e-3


@pytest.mark.parametrize("time_mixer", MIXERS)
def test_a_step_sees_every_frame_of_its_own_step(time_mixer):
    gen = generator(time_mixer)
    enc, mask, targets = inputs(b=1)
    base = gen(enc, mask, targets)
    moved = [t.clone() for t in targets]
    moved[0][:, 4] += torch.randn(12, dtype=torch.float64)  # one frame of step 1's input
    out = gen(enc, mask, moved)
    change = (out[1] - base[1]).abs().amax(dim=-1)[0]
    assert (change[:4] > 1e-6).all() and (change[5:] > 1e-6).all()  # both directions


@pytest.mark.parametrize("time_mixer", MIXERS)
def test_padded_frames_of_the_targets_change_nothing(time_mixer):
    gen = generator(time_mixer)
    enc, _, targets = inputs()
    mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4], dtype=torch.bool)
    base = gen(enc, mask, targets)
    junk = [t.clone() for t in targets]
    for t in junk:
        t[1, 5:] = 1e4 * torch.randn(4, 12, dtype=torch.float64)
    for a, b in zip(gen(enc, mask, junk), base):
        torch.testing.assert_close(a[mask], b[mask])
    empty = torch.zeros(2, 9, dtype=torch.bool)  # an item without valid frames: finite
    assert all(torch.isfinite(y).all() for y in gen(enc, empty))


def teacher_forced_by_hand(gen, enc, mask, targets):
    """A linear-time generator's teacher forcing, written out: step k adds the encoder
    output, the embedding of step k and the normalised, projected target k - 1 to the
    residual state carried over the steps, runs the blocks, and reads out the state."""
    state, out = torch.zeros_like(enc), []
    for k in range(gen.num_steps):
        z = enc + gen.step_embed.weight[k]
        if k:
            z = z + gen.in_proj(gen.in_norm(targets[k - 1]))
        x = state + z
        for block in gen.blocks:
            x, _ = block(x, mask)
        state = x
        out.append(gen.out_proj(gen.out_norm(state)))
    return out


@pytest.mark.parametrize("time_mixer", MIXERS)
def test_generation_equals_teacher_forcing_on_its_own_predictions(time_mixer):
    # attention: the KV-cached generation steps against teacher forcing, the one-pass
    # two-dimensional attention; the linear-time generator (whose teacher forcing runs
    # the step loop of its generation) against teacher forcing written out by hand.
    gen = generator(time_mixer)
    enc, mask, _ = inputs()
    own = gen(enc, mask)
    if time_mixer == "attention":
        ref = gen._attention_parallel(enc, mask, own)
    else:
        ref = teacher_forced_by_hand(gen, enc, mask, own)
    forced = gen(enc, mask, own)
    assert len(own) == len(forced) == len(ref) == 3
    for a, b, r in zip(own, forced, ref):
        torch.testing.assert_close(a, r)
        torch.testing.assert_close(b, r)


@pytest.mark.parametrize("architecture,time_mixer", [
    ("gendistiller", "attention"), ("gendistiller", "bimamba2"), ("distilhubert", "attention")])
def test_padded_batch_equals_single_utterances(architecture, time_mixer):
    torch.manual_seed(0)
    opts = {"d_state": 8} if time_mixer == "bimamba2" else None
    student = build_layer_student(tiny_teacher(), architecture, [1, 2], encoder_layers=1,
                                  time_mixer=time_mixer, mixer_options=opts).double().eval()
    enable_feature_input(student)  # as in training: CNN features of each utterance alone
    wavs = [torch.randn(n, dtype=torch.float64) for n in (3200, 2000)]
    cnn = student.base_model.feature_extractor
    batch, amask = pad_features([cnn(w[None])[0] for w in wavs], [len(w) for w in wavs])
    out = student(batch, attention_mask=amask)
    for i, w in enumerate(wavs):
        single = student(w[None])
        n = int(single.frame_mask.sum())
        assert int(out.frame_mask[i].sum()) == n
        for a, b in zip(out.layers, single.layers):
            torch.testing.assert_close(a[i, :n], b[0, :n], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("family", ["wav2vec2-base", "hubert-large-ll60k", "wavlm-base-plus"])
@pytest.mark.parametrize("time_mixer", MIXERS)
def test_save_load_round_trip(tmp_path, family, time_mixer):
    torch.manual_seed(0)
    student = build_layer_student(tiny_teacher(family), "gendistiller", [1, 2],
                                  encoder_layers=1, time_mixer=time_mixer,
                                  mixer_options={"d_state": 8} if time_mixer != "attention"
                                  else None).eval()
    student.save_pretrained(tmp_path)
    again = load_upstream(tmp_path)
    assert isinstance(again, LayerStudent) and again.info == student.info
    wav = torch.randn(2, 2400)
    for a, b in zip(student(wav).layers, again(wav).layers):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert student.is_linear_time() == (time_mixer != "attention")


def test_encoder_starts_as_the_teachers_first_layers():
    teacher = tiny_teacher("wav2vec2-base", num_hidden_layers=3)
    wav = torch.randn(1, 2400)
    cut = truncated_encoder(teacher, 2)
    hid = teacher(wav, output_hidden_states=True).hidden_states
    torch.testing.assert_close(cut(wav).last_hidden_state, hid[2], rtol=1e-6, atol=1e-6)
    student = build_layer_student(teacher, "distilhubert", encoder_layers=2).eval()
    torch.testing.assert_close(student(wav).encoded, hid[2], rtol=1e-6, atol=1e-6)
    assert student.target_layers == [1, 2, 3]
    front = {n for n, _ in student.named_parameters()
             if ".feature_extractor." in n or ".feature_projection." in n}
    assert front and {n for n, p in student.named_parameters() if not p.requires_grad} == front


def test_teacher_layers_for_a_probe_are_its_hidden_states():
    teacher = tiny_teacher()
    wav = torch.randn(1, 2400)
    layers, mask = upstream_layers(teacher, wav, layers=[1, 2])
    hid = teacher(wav, output_hidden_states=True).hidden_states
    torch.testing.assert_close(layers[1], hid[2])
    assert mask.shape == layers[0].shape[:2] and bool(mask.all())
    with pytest.raises(ConfigError, match=r"layers \[7\] out of range"):
        upstream_layers(teacher, wav, layers=[7])


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="target_layers"):
        build_layer_student(tiny_teacher(), target_layers=[2, 1])
    with pytest.raises(ConfigError, match="encoder_layers 5"):
        build_layer_student(tiny_teacher(), encoder_layers=5)
    with pytest.raises(ConfigError, match="architecture"):
        build_layer_student(tiny_teacher(), architecture="big")
    with pytest.raises(ConfigError, match="generator options"):
        build_layer_student(tiny_teacher(), generator={"layers": 3})
    with pytest.raises(ConfigError, match="two or more"):
        build_layer_student(tiny_teacher(), target_layers=[2])
    with pytest.raises(ConfigError, match="mixer options"):
        build_layer_student(tiny_teacher(), mixer_options={"d_state": 8})


def test_broken_folders_name_the_file(tmp_path):
    build_layer_student(tiny_teacher(), target_layers=[1, 2], encoder_layers=1).save_pretrained(
        tmp_path)
    info = tmp_path / "gendistiller.json"
    good = info.read_text()
    info.write_text(json.dumps({"head": {}}))
    with pytest.raises(DataError, match="gendistiller.json: does not describe"):
        LayerStudent.from_pretrained(tmp_path)
    info.write_text(good)
    head = tmp_path / "head.safetensors"
    head.write_bytes(head.read_bytes()[:100])
    with pytest.raises(DataError, match="head.safetensors"):
        LayerStudent.from_pretrained(tmp_path)


def test_loss_masks_padding_and_averages_layers():
    g = torch.Generator().manual_seed(0)
    p = [torch.randn(2, 6, 4, generator=g) for _ in range(2)]
    t = [torch.randn(2, 6, 4, generator=g) for _ in range(2)]
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3], dtype=torch.bool)
    loss, parts = distilhubert_loss(p, t, mask)
    ref = 0.0
    for a, b in zip(p, t):
        va, vb = a[mask], b[mask]          # valid frames only, (N, C)
        cos = torch.nn.functional.cosine_similarity(va, vb, dim=-1)
        ref += (va - vb).abs().mean() - torch.nn.functional.logsigmoid(cos).mean()
    torch.testing.assert_close(loss, ref / 2)
    junk = [x.clone() for x in p]
    for x in junk:
        x[1, 3:] = 1e6
    torch.testing.assert_close(distilhubert_loss(junk, t, mask)[0], loss)
