import logging

import pytest
import torch

from cald_speech.distill.guidance import Guidance, discover_waypoints, waypoint_pace_for
from cald_speech.distill.losses import distilhubert_loss, logit_kd_loss, masked_layer_loss
from cald_speech.errors import ConfigError, DataError
from cald_speech.tasks.modes import _waypoint_pace


def _batch(lengths, layers=3, dim=6, vocab=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    hs = [torch.randn(B, T, dim, generator=g, dtype=torch.float64) for _ in range(layers)]
    ht = [torch.randn(B, T, dim, generator=g, dtype=torch.float64) for _ in range(layers)]
    ls = torch.randn(B, T, vocab, generator=g, dtype=torch.float64)
    lt = torch.randn(B, T, vocab, generator=g, dtype=torch.float64)
    return mask, hs, ht, ls, lt


def _frame_weighted_singles(fn, lengths, mask, *tensors):
    total = 0.0
    for b, n in enumerate(lengths):
        single = [
            [x[b : b + 1, :n] for x in t] if isinstance(t, list) else t[b : b + 1, :n]
            for t in tensors
        ]
        total += n * float(fn(*single, mask[b : b + 1, :n]))
    return total / sum(lengths)


@pytest.mark.parametrize("lengths", [[7, 3], [5, 5, 1]])
def test_losses_ignore_padding(lengths):
    mask, hs, ht, ls, lt = _batch(lengths)
    for fn, args in [
        (masked_layer_loss, (hs, ht)),
        (lambda s, t, m: logit_kd_loss(s, t, m, temperature=2.0), (ls, lt)),
        (lambda s, t, m: distilhubert_loss(s, t, m)[0], (hs, ht)),
    ]:
        batch = float(fn(*args, mask))
        singles = _frame_weighted_singles(fn, lengths, mask, *args)
        assert batch == pytest.approx(singles, rel=1e-5)
        # garbage in padded frames changes nothing
        pad = ~mask
        noisy = [
            [x.masked_fill(pad[..., None], 1e3) for x in a] if isinstance(a, list)
            else a.masked_fill(pad[..., None], 1e3)
            for a in args
        ]
        assert float(fn(*noisy, mask)) == pytest.approx(batch, rel=1e-6)


def test_layer_loss_matches_hand_computation():
    mask, hs, ht, _, _ = _batch([4, 2])
    expected = 0.0
    for i in (1, 2):
        def ln(x):
            mu = x.mean(-1, keepdim=True)
            var = x.var(-1, unbiased=False, keepdim=True)
            return (x - mu) / torch.sqrt(var + 1e-5)
        d = (ln(hs[i]) - ln(ht[i])).pow(2).mean(-1)
        expected += d[mask].mean() / 2
    assert float(masked_layer_loss(hs, ht, mask)) == pytest.approx(float(expected), rel=1e-5)


def test_teacher_side_gets_no_gradient():
    mask, hs, ht, ls, lt = _batch([4, 2])
    hs = [h.requires_grad_() for h in hs]
    ht = [h.requires_grad_() for h in ht]
    masked_layer_loss(hs, ht, mask).backward()
    assert hs[1].grad is not None and hs[1].grad.abs().sum() > 0
    assert all(h.grad is None for h in ht)


def test_kd_is_kl_at_temperature():
    s = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    t = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    tau = 2.0
    ps, pt = torch.softmax(s / tau, -1), torch.softmax(t / tau, -1)
    kl = float((pt * (pt.log() - ps.log())).sum()) * tau**2
    assert float(logit_kd_loss(s, t, temperature=tau)) == pytest.approx(kl, rel=1e-6)


def test_bad_layer_configs():
    mask, hs, ht, _, _ = _batch([3])
    with pytest.raises(ConfigError, match="out of range"):
        masked_layer_loss(hs, ht, mask, layers=[5])
    with pytest.raises(ConfigError, match="same depth"):
        masked_layer_loss(hs[:2], ht, mask)
    with pytest.raises(ConfigError, match="temperature"):
        logit_kd_loss(hs[0], ht[0], temperature=0)


def test_guidance_schedules():
    with pytest.raises(ConfigError, match="unknown guidance mode"):
        Guidance("targett")
    with pytest.raises(ConfigError, match="switch_step"):
        Guidance("hybrid")
    with pytest.raises(ConfigError, match="strictly increasing"):
        Guidance("waypoint", waypoints=[(20, "b"), (10, "a")])
    g = Guidance("hybrid", switch_step=5, logit_kd_after_switch=False)
    assert [g.layer_weight(s) for s in (4, 5)] == [1.0, 0.0]
    assert [g.uses_teacher(s) for s in (4, 5)] == [True, False]
    t = Guidance("trajectory", teacher_update_every=3)
    assert [t.trains_teacher(s) for s in range(6)] == [False, False, True] * 2


def test_waypoint_discovery_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        discover_waypoints(tmp_path / "nope")
    with pytest.raises(DataError, match="no waypoint"):
        discover_waypoints(tmp_path)
    (tmp_path / "step-5").mkdir()
    (tmp_path / "step_005").mkdir()
    with pytest.raises(DataError, match="several waypoints"):
        discover_waypoints(tmp_path)


@pytest.mark.parametrize("pace", [0, -1.0, "fast", True])
def test_waypoint_pace_must_be_positive(pace):
    with pytest.raises(ConfigError, match="waypoint_pace"):
        Guidance("waypoint", waypoints=[(10, "a")], waypoint_pace=pace)


def test_waypoint_pace_maps_student_steps_onto_the_teacher_run():
    wps = [(0, "a"), (50, "b"), (100, "c"), (200, "d")]
    step_for_step = Guidance("waypoint", waypoints=wps)
    paced = Guidance("waypoint", waypoints=wps, waypoint_pace=waypoint_pace_for(wps, 40))
    assert paced.waypoint_pace == 5.0
    for s in range(60):  # student step s at pace 5 meets the teacher step 5 s
        assert paced.waypoint_index(s) == step_for_step.waypoint_index(5 * s)
    assert paced.waypoint_index(39) == 3  # it reaches the last waypoint by its end
    assert waypoint_pace_for(wps, 400) == 1.0  # never slower than step for step


def test_waypoint_pace_auto_and_the_short_student_warning(caplog):
    wps = [(0, "a"), (4850, "b")]
    assert _waypoint_pace({"waypoint_pace": "auto", "total_updates": 970}, wps) == 5.0
    with pytest.raises(ConfigError, match="total_updates"):
        _waypoint_pace({"waypoint_pace": "auto"}, wps)
    with caplog.at_level(logging.WARNING, logger="cald_speech.tasks.modes"):
        assert _waypoint_pace({"waypoint_pace": 1.0, "total_updates": 970}, wps) == 1.0
    assert "first 20 %" in caplog.text and "waypoint_pace: auto" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cald_speech.tasks.modes"):
        _waypoint_pace({"waypoint_pace": 5, "total_updates": 970}, wps)
    assert caplog.text == ""
    # a run stopped early by optimizer_step_limit has fewer updates than its schedule
    assert _waypoint_pace({"waypoint_pace": "auto", "total_updates": 2000,
                           "optimizer_step_limit": 485}, wps) == 10.0


@pytest.mark.parametrize("value,ok", [("auto", True), (2.5, True), (3, True), ("2", False),
                                      ("Auto", False), (0, False), (True, False), (None, False)])
def test_waypoint_pace_option_kind(value, ok):
    from cald_speech.tasks.hparams import check_types

    if ok:
        check_types({"waypoint_pace": value}, "cald.yaml")
    else:
        with pytest.raises(ConfigError, match="waypoint_pace must be a positive number or auto"):
            check_types({"waypoint_pace": value}, "cald.yaml")
