import pytest
import torch

from landscape.models.registry import build_model, list_models

SHAPES = {"mlp": (40,), "cnn1d": (40,), "cnn2d": (1, 28, 28)}


@pytest.mark.parametrize("name", [n for n in list_models() if not n.startswith(("transformer", "lstm"))])
def test_every_registered_model_builds_with_the_right_output_shape(name):  # language models: tests/test_lm.py
    shape = SHAPES.get(name, (3, 32, 32))
    model = build_model(name, num_classes=7, input_shape=shape).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_noshort_variants_have_no_shortcut_parameters():
    with_short = {k for k, _ in build_model("resnet20").named_parameters()}
    without = {k for k, _ in build_model("resnet20_noshort").named_parameters()}
    assert any("shortcut" in k for k in with_short)
    assert not any("shortcut" in k for k in without)


def test_user_model_by_import_path():
    model = build_model("torch.nn:Linear", in_features=3, out_features=2, num_classes=2, input_shape=[3])
    assert isinstance(model, torch.nn.Linear) and model.out_features == 2


def test_unknown_model_is_a_key_error_naming_the_choices():
    with pytest.raises(KeyError, match="resnet20"):
        build_model("resnet21")
    with pytest.raises(KeyError, match="cannot import"):
        build_model("no_such_pkg.mod:fn")
