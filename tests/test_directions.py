import pytest
import torch

from landscape.core.directions import (
    DirectionSpec,
    create_random_directions,
    normalize_direction,
    orthogonalize,
    target_direction,
)
from landscape.core.params import dot, model_tensors, norm, snapshot
from landscape.models.registry import build_model


@pytest.fixture
def resnet():
    torch.manual_seed(0)
    return build_model("resnet20", num_classes=4, input_shape=[3, 8, 8])


def test_filter_norms_match_the_weights_and_biasbn_is_zero(resnet):
    theta = snapshot(model_tensors(resnet))
    (d,) = create_random_directions(theta, 1, DirectionSpec(norm="filter", ignore="biasbn", seed=3))
    multi = 0
    for k, w in theta.items():
        if w.dim() <= 1:
            assert torch.count_nonzero(d[k]) == 0, k
            continue
        multi += 1
        torch.testing.assert_close(d[k].reshape(len(w), -1).norm(dim=1), w.reshape(len(w), -1).norm(dim=1),
                                   rtol=1e-5, atol=1e-7)
    assert multi >= 20


def test_ignore_none_copies_one_dimensional_weights_like_the_reference(resnet):
    theta = snapshot(model_tensors(resnet))
    (d,) = create_random_directions(theta, 1, DirectionSpec(ignore="none"))
    assert torch.equal(d["bn1.weight"], theta["bn1.weight"])
    assert torch.equal(d["linear.bias"], theta["linear.bias"])


def test_layer_and_weight_normalization(resnet):
    theta = snapshot(model_tensors(resnet))
    g = torch.Generator().manual_seed(0)
    raw = {k: torch.randn(v.shape, generator=g) for k, v in theta.items()}
    layer = normalize_direction(raw, theta, "layer")
    assert layer["conv1.weight"].norm() == pytest.approx(theta["conv1.weight"].norm().item(), rel=1e-5)
    weight = normalize_direction(raw, theta, "weight")
    assert torch.allclose(weight["conv1.weight"], raw["conv1.weight"] * theta["conv1.weight"])
    none = normalize_direction(raw, theta, "none")
    assert torch.equal(none["conv1.weight"], raw["conv1.weight"])
    with pytest.raises(ValueError, match="'filterr' is not one of"):
        normalize_direction(raw, theta, "filterr")


def test_same_seed_same_direction_and_first_direction_shared_by_1d_and_2d(resnet):
    theta = snapshot(model_tensors(resnet))
    a = create_random_directions(theta, 2, DirectionSpec(seed=7))
    b = create_random_directions(theta, 2, DirectionSpec(seed=7))
    (c,) = create_random_directions(theta, 1, DirectionSpec(seed=7))
    other = create_random_directions(theta, 1, DirectionSpec(seed=8))[0]
    for k in theta:
        assert torch.equal(a[0][k], b[0][k]) and torch.equal(a[1][k], b[1][k]) and torch.equal(a[0][k], c[k])
    assert not torch.equal(a[0]["conv1.weight"], other["conv1.weight"])


def test_directions_are_gaussian_not_uniform(resnet):
    theta = snapshot(model_tensors(resnet))
    g = torch.Generator().manual_seed(0)
    from landscape.core.directions import random_direction

    d = random_direction(theta, g)["layers.8.conv2.weight"]
    assert (d < 0).float().mean().item() == pytest.approx(0.5, abs=0.02)


def test_orthogonalize_after_normalization(resnet):
    theta = snapshot(model_tensors(resnet))
    d1, d2 = create_random_directions(theta, 2, DirectionSpec(seed=1, orthogonal=True))
    assert abs(dot(d1, d2)) < 1e-6 * dot(d1, d1)
    d2b = orthogonalize(d2, d1)
    assert abs(dot(d1, d2b)) < 1e-6 * dot(d1, d1)
    assert 0 < norm(d2) <= norm(create_random_directions(theta, 2, DirectionSpec(seed=1))[1])  # projection shrinks


def test_states_directions_cover_batchnorm_statistics(resnet):
    states = model_tensors(resnet, "states")
    assert "bn1.running_mean" in states and "bn1.num_batches_tracked" not in states
    assert "bn1.running_mean" not in model_tensors(resnet, "weights")


def test_target_direction_interpolates_between_checkpoints():
    a, b = build_model("mlp"), build_model("mlp")
    ta, tb = snapshot(model_tensors(a)), snapshot(model_tensors(b))
    d = target_direction(ta, tb)
    for k in ta:
        assert torch.allclose(ta[k] + 1.0 * d[k], tb[k], atol=1e-6)
    with pytest.raises(ValueError, match="same architecture"):
        target_direction(ta, snapshot(model_tensors(build_model("cnn1d"))))


def test_direction_file_round_trip_keyed_by_name(resnet, tmp_path):
    from landscape.core.params import from_numpy, to_numpy
    from landscape.core.surface_file import directions_sha256, read_directions, save_directions

    theta = snapshot(model_tensors(resnet))
    dirs = create_random_directions(theta, 2, DirectionSpec(seed=4))
    save_directions(str(tmp_path / "d.h5"), [to_numpy(d) for d in dirs], {"seed": 4})
    back = read_directions(str(tmp_path / "d.h5"))
    assert len(back) == 2 and set(back[0]) == set(theta)
    for a, b in zip(dirs, back):
        for k in a:
            assert torch.equal(a[k], from_numpy(b)[k]), k
    assert directions_sha256([to_numpy(d) for d in dirs]) == directions_sha256(back)
