"""The feature cache keeps precisions apart: features computed by a CNN under bfloat16
autocast are never served to a float32 run (training or evaluation), and the other way
round; each precision gets the features a live CNN computes in it."""

import torch

from cald_speech.features import FeatureCache, base_model
from cald_speech.testing import tiny_teacher


def live(model, wav):
    fe = base_model(model).feature_extractor
    with torch.no_grad():
        return fe(wav[None]).squeeze(0)


def test_bf16_features_are_not_served_to_fp32_runs(tmp_path):
    model = tiny_teacher(feat_extract_norm="layer", conv_bias=True)
    wav = torch.randn(16000, generator=torch.Generator().manual_seed(0))
    for folder in (tmp_path / "cache", None):      # on disk and in memory
        cache = FeatureCache(folder)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = cache.features(model, "u1", wav)
            ref_bf16 = live(model, wav).float()
        fp32 = cache.features(model, "u1", wav)
        assert cache.hits == 0                      # computed again, not served
        assert torch.equal(fp32, live(model, wav))
        assert torch.equal(bf16, ref_bf16)
        assert not torch.allclose(bf16, fp32, rtol=1e-4, atol=1e-4)
        # each precision is served its own features from then on
        assert torch.equal(cache.features(model, "u1", wav), fp32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(cache.features(model, "u1", wav), bf16)
        assert cache.hits == 2
