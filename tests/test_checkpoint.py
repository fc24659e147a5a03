import os

import pytest
import torch

from landscape.base.errors import UserError
from landscape.models.checkpoint_file import (
    load_checkpoint,
    load_data_for,
    load_model,
    make_checkpoint,
    save_checkpoint,
)
from landscape.models.registry import build_model
from landscape.runtime.forward import loss_accuracy


def test_round_trip_with_weights_only(tmp_path):
    model = build_model("resnet20", num_classes=4, input_shape=[3, 8, 8])
    ckpt = make_checkpoint(model, "resnet20", {"num_classes": 4, "input_shape": [3, 8, 8]}, "synthetic",
                           {"input_shape": [3, 8, 8]}, {"test_acc": 50.0})
    path = tmp_path / "c.pt"
    save_checkpoint(ckpt, str(path))
    assert not os.path.exists(f"{path}.tmp")
    loaded = torch.load(path, map_location="cpu", weights_only=True)  # must not raise
    rebuilt, _ = load_model(str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(v, rebuilt.state_dict()[k]), k
    assert loaded["model"]["name"] == "resnet20" and loaded["metrics"]["test_acc"] == 50.0


def test_trainer_checkpoint_is_self_describing_and_reproduces_its_metrics(mlp_ckpt):
    ckpt = torch.load(mlp_ckpt, map_location="cpu", weights_only=True)
    for key in ("global_batch_size", "per_rank_batch_size", "accumulation_steps", "world_size"):
        assert key in ckpt["plan"]
    for key in ("batch_size", "weight_decay", "lr", "momentum", "optimizer", "schedule", "seed", "epochs"):
        assert key in ckpt["train_config"]
    assert {"optimizer", "scheduler", "rng", "package_version", "epoch", "step"} <= set(ckpt)
    model, ckpt = load_model(mlp_ckpt)
    data = load_data_for(ckpt)
    m = loss_accuracy(model, data.x_test, data.y_test)
    assert m.acc == pytest.approx(ckpt["metrics"]["test_acc"], abs=1e-9)
    assert m.loss == pytest.approx(ckpt["metrics"]["test_loss"], rel=1e-6)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_object_is_refused(tmp_path, mlp_ckpt):
    ckpt = torch.load(mlp_ckpt, weights_only=True)
    ckpt["payload"] = Evil()
    path = tmp_path / "evil.pt"
    torch.save(ckpt, path)
    with pytest.raises(UserError, match="holds pickled posix.system, which loading with weights_only=True refuses"):
        load_checkpoint(str(path))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_is_refused(tmp_path, mlp_ckpt, damage):
    data = open(mlp_ckpt, "rb").read()
    path = tmp_path / "bad.pt"
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10, "empty": b""}[damage])
    with pytest.raises(UserError, match="truncated, corrupt|corrupt"):
        load_checkpoint(str(path))


def test_foreign_state_dict_is_refused_with_a_fix(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(build_model("mlp").state_dict(), path)
    with pytest.raises(UserError, match="make_checkpoint"):
        load_checkpoint(str(path))
