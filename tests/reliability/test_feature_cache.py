"""The frozen-CNN feature cache never serves features of other audio."""

import os

import pytest
import torch

from cald_speech.features import FeatureCache, base_model
from cald_speech.testing import tiny_teacher


def live(model, wav):
    with torch.no_grad():
        return base_model(model).feature_extractor(wav[None])[0]


@pytest.mark.parametrize("on_disk", [True, False])
def test_new_audio_under_an_old_id_gets_fresh_features(tmp_path, on_disk):
    model = tiny_teacher()
    cache = FeatureCache(tmp_path / "c" if on_disk else None)
    a, b = torch.randn(4000), torch.randn(4000)  # same length: same frame count
    torch.testing.assert_close(cache.features(model, "u1", a), live(model, a))
    assert cache.features(model, "u1", a.clone()) is not None and cache.hits == 1
    torch.testing.assert_close(cache.features(model, "u1", b), live(model, b))
    if on_disk:  # a fresh cache over the same folder: the entry now holds b's features
        again = FeatureCache(tmp_path / "c")
        torch.testing.assert_close(again.features(model, "u1", b), live(model, b))
        assert again.hits == 1
        torch.testing.assert_close(again.features(model, "u1", a), live(model, a))


def test_entries_load_as_plain_tensors_and_bad_files_are_recomputed(tmp_path):
    model = tiny_teacher()
    cache = FeatureCache(tmp_path)
    wav = torch.randn(3000)
    cache.features(model, "u", wav)
    (path,) = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    entry = torch.load(path, weights_only=True)  # no pickled code
    assert set(entry) == {"features", "audio"}
    with open(path, "wb") as f:
        f.write(b"not a tensor file")
    torch.testing.assert_close(FeatureCache(tmp_path).features(model, "u", wav), live(model, wav))
