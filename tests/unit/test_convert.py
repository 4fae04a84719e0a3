"""Conversion of transformers speech encoders into students (cald_speech.student.conversion).

Padding tests use ``feat_extract_norm="layer"`` (as wav2vec2-large-lv60 and
hubert-large-ll60k do): with ``"group"`` (wav2vec2-base, wavlm-base-plus) the first CNN
layer normalises over time, padding included, so even the teacher's valid frames
depend on how much padding a batch has.
"""

import copy

import pytest
import torch

from cald_speech.errors import ConfigError
from cald_speech.mixers import available_mixers
from cald_speech.mixers.attention import QKVOMixer
from cald_speech.mixers.bimamba2 import BiMamba2, BiMamba2Shared
from cald_speech.student import (
    FRAME_MASK_IMPLEMENTATION,
    PUBLIC_SHAPES,
    MixerAttention,
    Student,
    check_conversion,
    convert,
    encoder_layers,
    frame_padding_mask,
    public_config,
    public_parameter_counts,
)
from cald_speech.testing import tiny_teacher

SHAPES = list(PUBLIC_SHAPES)
HEADS = ["model", "ctc", "classification"]
LENGTHS = [1600, 1130, 700]


def _batch(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    wav = torch.randn(len(lengths), max(lengths), generator=g)
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    return wav * mask, mask


def _main_output(out):
    return out.logits if "logits" in out else out.last_hidden_state


def _converted_layer(name, keep):
    parts = name.split(".")
    if "layers" in parts and ".attention." in name:
        return int(parts[parts.index("layers") + 1]) not in keep
    return False


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("shape", SHAPES)
def test_transferred_tensors_are_bit_identical_copies(shape, head):
    teacher = tiny_teacher(shape, head=head)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = convert(teacher, mixer="bimamba2", init="attention", keep_attention=[1])
    t_state, s_state = teacher.state_dict(), student.model.state_dict()
    transferred = [k for k in t_state if not _converted_layer(k, keep={1})]
    assert any("feature_extractor" in k for k in transferred)
    assert any("feed_forward" in k for k in transferred)
    assert any("layers.1.attention.q_proj" in k for k in transferred)
    for key in transferred:
        assert torch.equal(t_state[key], s_state[key]), key
        assert t_state[key].data_ptr() != s_state[key].data_ptr(), f"{key} is shared"
    # converted attention is gone, mixer parameters are there instead
    assert not any("layers.0.attention.q_proj" in k for k in s_state)
    assert any("layers.0.attention.mixer." in k for k in s_state)
    # the teacher is untouched
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(isinstance(m, MixerAttention) for m in teacher.modules())


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("shape", SHAPES)
def test_keeping_every_layer_reproduces_the_teacher_exactly(shape, head):
    teacher = tiny_teacher(shape, head=head, feat_extract_norm="layer")
    layers = teacher.config.num_hidden_layers
    student = convert(teacher, mixer="bimamba2", keep_attention=range(layers))
    assert student.layer_kinds() == ["attention"] * layers
    wav, mask = _batch()
    t_out = teacher(wav, attention_mask=mask, output_hidden_states=True)
    s_out = student(wav, attention_mask=mask, output_hidden_states=True)
    assert torch.equal(_main_output(t_out), _main_output(s_out))
    assert len(t_out.hidden_states) == len(s_out.hidden_states) == layers + 1
    for t_h, s_h in zip(t_out.hidden_states, s_out.hidden_states):
        assert torch.equal(t_h, s_h)


@pytest.mark.parametrize("shape", ["wav2vec2-base", "wav2vec2-large-lv60", "hubert-large-ll60k"])
def test_attention_mixer_from_attention_matches_the_teacher(shape):
    """Softmax mixers filled from the teacher reproduce it: the mask plumbing is right."""
    teacher = tiny_teacher(shape, head="ctc", feat_extract_norm="layer")
    student = convert(teacher, mixer="attention", init="attention")
    assert student.config._attn_implementation == FRAME_MASK_IMPLEMENTATION
    wav, mask = _batch()
    t_out = teacher(wav, attention_mask=mask, output_hidden_states=True)
    s_out = student(wav, attention_mask=mask, output_hidden_states=True)
    frames = teacher._get_feature_vector_attention_mask(t_out.logits.shape[1], mask)
    for t_h, s_h in zip(t_out.hidden_states, s_out.hidden_states):
        torch.testing.assert_close(s_h[frames], t_h[frames], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s_out.logits[frames], t_out.logits[frames], rtol=1e-5, atol=1e-5)


def _in_proj_slices(in_proj, d_inner, gn):
    """x, B, C row blocks of a mamba-ssm in_proj laid out as [z, x, B, C, dt]."""
    return {
        "x": slice(d_inner, 2 * d_inner),
        "B": slice(2 * d_inner, 2 * d_inner + gn),
        "C": slice(2 * d_inner + gn, 2 * d_inner + 2 * gn),
    }


def _check_mapped(mixer, attention):
    q, k, v, o = attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj
    if isinstance(mixer, (BiMamba2, BiMamba2Shared)):
        if isinstance(mixer, BiMamba2):
            pairs = [(mixer.fwd, mixer.fwd.in_proj, mixer.fwd.out_proj),
                     (mixer.bwd, mixer.bwd.in_proj, mixer.bwd.out_proj)]
        else:
            pairs = [(mixer.fwd, mixer.in_proj, mixer.out_proj)]
        for core, in_proj, out_proj in pairs:
            rows = _in_proj_slices(in_proj, core.d_inner, core.ngroups * core.d_state)
            for block, lin in (("x", v), ("B", k), ("C", q)):
                assert torch.equal(in_proj.weight[rows[block]], lin.weight), block
                assert torch.equal(in_proj.bias[rows[block]], lin.bias), block
            assert torch.equal(out_proj.weight, o.weight)
            assert torch.equal(out_proj.bias, o.bias)
    elif isinstance(mixer, QKVOMixer):
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            assert torch.equal(getattr(mixer, name).weight, getattr(attention, name).weight)
            assert torch.equal(getattr(mixer, name).bias, getattr(attention, name).bias)
    else:
        pytest.skip(f"no parameter layout known for mixer '{mixer.name}'")


@pytest.mark.parametrize("mixer", available_mixers())
@pytest.mark.parametrize("shape", ["wav2vec2-base", "wavlm-base-plus"])
def test_init_from_attention_copies_q_k_v_o(shape, mixer):
    teacher = tiny_teacher(shape)
    try:
        student = convert(teacher, mixer=mixer, init="attention")
    except ConfigError as exc:
        pytest.skip(f"mixer '{mixer}' does not start from attention: {exc}")
    for t_layer, s_layer in zip(encoder_layers(teacher), encoder_layers(student.model)):
        _check_mapped(s_layer.attention.mixer, t_layer.attention)


def test_random_init_does_not_copy_attention():
    teacher = tiny_teacher()
    student = convert(teacher, mixer="attention", init="random")
    mixer = encoder_layers(student.model)[0].attention.mixer
    assert not torch.equal(mixer.q_proj.weight, encoder_layers(teacher)[0].attention.q_proj.weight)
    assert student.cald["init"] == "random"


def test_bimamba2_defaults_to_the_attention_compatible_shape():
    teacher = tiny_teacher()  # hidden 32, 4 heads -> head_dim 8
    student = convert(teacher, mixer="bimamba2", init="attention")
    cfg = student.cald["mixers"][0]
    assert (cfg["expand"], cfg["headdim"], cfg["d_state"], cfg["ngroups"]) == (1, 8, 8, 4)
    random = convert(teacher, mixer="bimamba2", init="random", d_state=16)
    assert random.cald["mixers"][0]["d_state"] == 16


def _valid_frames_agree(model, wav, mask, lengths, atol=1e-5):
    full = model(wav, attention_mask=mask, output_hidden_states=True)
    for b, n in enumerate(lengths):
        one = model(wav[b : b + 1, :n], output_hidden_states=True)
        frames = one.hidden_states[0].shape[1]
        assert len(one.hidden_states) == len(full.hidden_states)
        for h_full, h_one in zip(full.hidden_states, one.hidden_states):
            torch.testing.assert_close(h_full[b : b + 1, :frames], h_one, rtol=1e-5, atol=atol)
        out_full, out_one = _main_output(full), _main_output(one)
        if out_full.dim() == 3:
            torch.testing.assert_close(out_full[b : b + 1, :frames], out_one, rtol=1e-5, atol=atol)
        else:  # pooled classification logits
            torch.testing.assert_close(out_full[b : b + 1], out_one, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("keep", [[], [1]], ids=["all-mixers", "hybrid"])
@pytest.mark.parametrize("shape", SHAPES)
def test_padded_batch_equals_single_utterances(shape, keep):
    teacher = tiny_teacher(shape, head="ctc", feat_extract_norm="layer")
    student = convert(teacher, mixer="bimamba2", init="attention", keep_attention=keep).eval()
    wav, mask = _batch()
    with torch.no_grad():
        _valid_frames_agree(student, wav, mask, LENGTHS)
        t_out = teacher(wav, attention_mask=mask, output_hidden_states=True)
        s_out = student(wav, attention_mask=mask, output_hidden_states=True)
    assert [h.shape for h in s_out.hidden_states] == [h.shape for h in t_out.hidden_states]
    assert s_out.logits.shape == t_out.logits.shape


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_padding_reaches_mixers_under_each_attention_implementation(implementation):
    teacher = tiny_teacher("wav2vec2-large-lv60", head="classification",
                           attn_implementation=implementation)
    assert teacher.config._attn_implementation == implementation
    student = convert(teacher, mixer="bimamba2", keep_attention=[0]).eval()
    assert student.config._attn_implementation == implementation
    wav, mask = _batch()
    with torch.no_grad():
        _valid_frames_agree(student, wav, mask, LENGTHS)


def test_softmax_layers_also_run_under_the_frame_mask_implementation():
    teacher = tiny_teacher("hubert-large-ll60k", head="ctc")
    student = convert(teacher, mixer="bimamba2", keep_attention=[0, 1])
    student.config._attn_implementation = FRAME_MASK_IMPLEMENTATION
    wav, mask = _batch()
    with torch.no_grad():
        t_out, s_out = teacher(wav, attention_mask=mask), student(wav, attention_mask=mask)
    frames = teacher._get_feature_vector_attention_mask(t_out.logits.shape[1], mask)
    torch.testing.assert_close(s_out.logits[frames], t_out.logits[frames], rtol=1e-5, atol=1e-5)


def test_mixers_receive_the_frame_mask_without_a_quadratic_mask():
    teacher = tiny_teacher("wav2vec2-large-lv60", head="ctc")
    student = convert(teacher, mixer="bimamba2").eval()
    seen = []

    def spy(module, args, kwargs):
        seen.append(kwargs["attention_mask"])

    for layer in encoder_layers(student.model):
        layer.attention.register_forward_pre_hook(spy, with_kwargs=True)
    wav, mask = _batch()
    with torch.no_grad():
        out = student(wav, attention_mask=mask)
    frames = teacher._get_feature_vector_attention_mask(out.logits.shape[1], mask)
    assert len(seen) == teacher.config.num_hidden_layers
    for got in seen:
        assert got.shape == frames.shape  # (B, T): nothing T x T is built
        assert torch.equal(frame_padding_mask(got), frames)


def test_gradient_checkpointing_keeps_the_padding_mask():
    teacher = tiny_teacher("wav2vec2-large-lv60", head="ctc", layerdrop=0.0, mask_time_prob=0.0,
                           hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                           feat_proj_dropout=0.0, final_dropout=0.0)
    wav, mask = _batch()
    reference = convert(teacher, mixer="bimamba2", keep_attention=[1])
    grads = []
    for checkpointing in (False, True):
        student = copy.deepcopy(reference).train()
        if checkpointing:
            student.model.gradient_checkpointing_enable()
        torch.manual_seed(0)
        student(wav, attention_mask=mask).logits.square().mean().backward()
        mixer = encoder_layers(student.model)[0].attention.mixer
        grads.append(mixer.fwd.in_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_wavlm_position_bias_moves_to_the_first_kept_layer():
    teacher = tiny_teacher("wavlm-base-plus", num_hidden_layers=3)
    student = convert(teacher, mixer="bimamba2", keep_attention=[1, 2])
    layers_t, layers_s = encoder_layers(teacher), encoder_layers(student.model)
    assert torch.equal(layers_s[1].attention.compute_bias(7, 7),
                       layers_t[0].attention.compute_bias(7, 7))
    assert not hasattr(layers_s[2].attention, "rel_attn_embed")
    wav, mask = _batch()
    out = student(wav, attention_mask=mask, output_hidden_states=True)
    assert len(out.hidden_states) == 4
    # layer 0 kept: the module is the teacher's, intact
    kept0 = convert(teacher, mixer="bimamba2", keep_attention=[0])
    assert type(encoder_layers(kept0.model)[0].attention) is type(layers_t[0].attention)


def test_student_follows_teacher_device_dtype_and_mode():
    teacher = tiny_teacher("hubert-large-ll60k").double().train()
    student = convert(teacher, mixer="bimamba2")
    assert student.training
    assert {p.dtype for p in student.parameters()} == {torch.float64}
    student.eval()
    wav, _ = _batch()
    out = student(wav.double(), output_hidden_states=True)
    assert out.last_hidden_state.dtype == torch.float64


def test_convert_accepts_a_folder(tmp_path):
    teacher = tiny_teacher(head="ctc")
    teacher.save_pretrained(tmp_path)
    student = convert(tmp_path, mixer="attention", init="attention")
    assert isinstance(student, Student)
    assert student.cald["source_class"] == "Wav2Vec2ForCTC"


# ----- bad input: clear errors, raised before any work -------------------------------


@pytest.fixture
def no_copy(monkeypatch):
    """Fails the test if conversion starts copying the teacher."""

    def forbidden(*args, **kwargs):
        raise AssertionError("conversion started before its settings were validated")

    monkeypatch.setattr(copy, "deepcopy", forbidden)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(keep_attention=[2]), "layer 2 is out of range"),
        (dict(keep_attention=[-1]), "layer -1 is out of range"),
        (dict(keep_attention=["0"]), "must be integers"),
        (dict(mixer="transformer-xl"), "unknown mixer 'transformer-xl'"),
        (dict(init="zeros"), "init must be one of"),
        (dict(mixer="bimamba2", init="random", headdim=5), "bimamba2"),
        (dict(mixer="bimamba2", init="attention", d_state=3), "attention"),
        (dict(mixer="bimamba2", warp_speed=9), "warp_speed"),
    ],
)
def test_bad_settings_raise_before_any_work(no_copy, kwargs, message):
    teacher = tiny_teacher()
    with pytest.raises(ConfigError, match=message):
        convert(teacher, **kwargs)


def test_unsupported_architecture_names_the_supported_ones(no_copy):
    from transformers import BertConfig, BertModel, Wav2Vec2ForPreTraining

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=64, vocab_size=50))
    with pytest.raises(ConfigError, match="unsupported architecture 'BertModel'.*Wav2Vec2ForCTC"):
        convert(bert)
    pretraining = Wav2Vec2ForPreTraining(public_config("wav2vec2-base", tiny=True))
    with pytest.raises(ConfigError, match="HubertForCTC"):
        convert(pretraining)


def test_a_student_is_not_converted_again():
    student = convert(tiny_teacher(), mixer="attention")
    with pytest.raises(ConfigError, match="already a student"):
        convert(student)


def test_heads_that_do_not_divide_the_width_are_rejected():
    config = public_config("wav2vec2-base", tiny=True, hidden_size=30)
    with pytest.raises(ConfigError, match="not a multiple"):
        check_conversion(config, mixer="bimamba2")


@pytest.mark.slow
def test_public_checkpoint_shapes_full_size():
    """Full-size configs of the public checkpoints, random weights; counts are reported."""
    paper = public_parameter_counts("bimamba2", "random", d_state=128)
    mil = public_parameter_counts("bimamba2", "attention")
    for counts in (paper, mil):
        for shape, c in counts.items():
            assert c["student"] == c["teacher"] - c["dropped_attention"] + c["mixers"], shape
    assert paper["wav2vec2-base"]["teacher"] == 94_371_712
    assert paper["wav2vec2-large-lv60"]["teacher"] == 315_438_720
    # CALD (He & Garner 2025) reports a ~379M-parameter student of wav2vec2-large-lv60
    assert round(paper["wav2vec2-large-lv60"]["student"] / 1e6) == 379
    print("\nparameters (teacher -> student), bimamba2 paper config (d_state 128, random):")
    for shape, c in paper.items():
        print(f"  {shape:<22} {c['teacher']:>13,} -> {c['student']:>13,}")
    print("bimamba2 from attention (d_state = head_dim, ngroups = heads):")
    for shape, c in mil.items():
        print(f"  {shape:<22} {c['teacher']:>13,} -> {c['student']:>13,}")
