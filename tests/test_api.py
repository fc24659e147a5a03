"""The Python API and the CLI on a user's own model, data and metric: `import landscape`, foreign weights files,
streamed sources, parameter subsets, the sanity report and auto axes."""

import json
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import landscape
from landscape.base.errors import ConfigError, UserError
from landscape.core.surface_file import read_surface
from tests import userland
from tests.conftest import run_module

CPU = torch.device("cpu")


def _close(a, b, rtol=1e-6):
    assert a.values.keys() == b.values.keys()
    for k in a.values:
        np.testing.assert_allclose(a.values[k], b.values[k], rtol=rtol, atol=1e-9, err_msg=k)


@pytest.mark.slow
def test_import_landscape_loads_no_torch_until_the_api_is_used():
    code = ("import sys, landscape; assert 'torch' not in sys.modules; landscape.surface; "
            "assert 'torch' in sys.modules; print(landscape.__all__)")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "random_directions" in out.stdout and "surface" in out.stdout


def test_streamed_loader_equals_resident_tensors_and_leaves_the_model_alone():
    model = userland.make_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = landscape.random_directions(model, n=2, seed=3)
    resident = landscape.surface(model, userland.tensors(), d, x="-1:1:5", y="-1:1:3", batch_size=20,
                                 progress=False)
    streamed = landscape.surface(model, userland.loader(), d, x="-1:1:5", y="-1:1:3", progress=False)
    dataset = landscape.surface(model, TensorDataset(*userland.tensors()), d, x="-1:1:5", y="-1:1:3", batch_size=20,
                                progress=False)
    _close(resident, streamed, rtol=1e-12)
    _close(resident, dataset, rtol=1e-12)
    assert list(resident.values) == ["loss", "acc"] and resident.values["loss"].shape == (3, 5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_the_centre_is_the_exact_sample_weighted_mean_over_uneven_batches():
    model = userland.make_mlp()
    x, y = userland.tensors()
    d = landscape.random_directions(model, n=1)
    s = landscape.surface(model, DataLoader(TensorDataset(x, y), batch_size=7), d, x=[0.0], progress=False)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(x).double(), y).item()
    assert s.values["loss"][0] == pytest.approx(expected, rel=1e-7)
    assert s.values["acc"][0] == pytest.approx(100 * (model(x).argmax(1) == y).float().mean().item())


def test_dict_batches_keyword_models_dict_outputs_and_a_users_metric():
    model = userland.KeywordMLP()
    d = landscape.random_directions(model, n=1)
    s = landscape.surface(model, userland.DictBatches(), d, x="-1:1:3", progress=False)
    assert list(s.values) == ["loss", "acc"]
    plain = landscape.surface(model.net, {"train": userland.tensors(64)}, landscape.random_directions(model.net, 1),
                              x="-1:1:3", metrics=userland.margin, progress=False)
    assert list(plain.values) == ["train_margin"] and np.isfinite(plain.values["train_margin"]).all()


def test_params_subset_moves_only_the_selected_tensors():
    model = userland.make_mlp()
    full = landscape.random_directions(model, n=1, seed=5)[0]
    part = landscape.random_directions(model, n=1, seed=5, params="2.*")[0]
    for k in full:
        if k.startswith("2."):
            assert torch.equal(part[k], full[k]), k  # filter normalization unchanged for the selected tensors
        else:
            assert not part[k].any(), k
    model[0].weight.requires_grad_(False)
    trainable = landscape.random_directions(model, n=1, seed=5, trainable_only=True)[0]
    assert not trainable["0.weight"].any() and trainable["2.weight"].any()
    by_predicate = landscape.random_directions(model, n=1, seed=5, params=lambda name: name.endswith("weight"))[0]
    assert by_predicate["0.weight"].any() and not by_predicate["0.bias"].any()
    with pytest.raises(ConfigError, match="matches no tensor"):
        landscape.random_directions(model, params="blocks.*.attn.*")


def test_direction_to_another_model_interpolates_to_it():
    a, b = userland.make_mlp(), userland.make_mlp()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.3)
    d = landscape.direction_to(a, b)
    s = landscape.surface(a, userland.tensors(), d, x=[0.0, 1.0], progress=False)
    x, y = userland.tensors()
    with torch.no_grad():
        at_b = nn.functional.cross_entropy(b(x).double(), y).item()
    assert s.values["loss"][1] == pytest.approx(at_b, rel=1e-6)
    assert landscape.direction_to(a, b.state_dict()).keys() == d.keys()


def test_out_file_resumes_and_refuses_another_request(tmp_path):
    model = userland.make_mlp()
    d = landscape.random_directions(model, n=2)
    path = str(tmp_path / "s.h5")
    first = landscape.surface(model, userland.loader(), d, x="-1:1:3", y="-1:1:3", out=path, progress=False)
    again = landscape.surface(model, userland.loader(), d, x="-1:1:3", y="-1:1:3", out=path, progress=False)
    _close(first, again, rtol=0)
    assert read_surface(path).report["centre"]["loss"] == pytest.approx(first.values["loss"][1, 1])
    before = open(path, "rb").read()
    with pytest.raises(UserError, match="another x grid"):
        landscape.surface(model, userland.loader(), d, x="-2:2:3", y="-1:1:3", out=path, progress=False)
    assert open(path, "rb").read() == before


def test_surface_plot_draws_every_kind():
    import matplotlib

    matplotlib.use("Agg")
    model = userland.make_mlp()
    s2 = landscape.surface(model, userland.tensors(), landscape.random_directions(model, 2), x="-1:1:4",
                           y="-1:1:3", progress=False)
    for kind in ("contour", "filled", "heatmap", "3d"):
        assert s2.plot(kind) is not None
    s1 = landscape.surface(model, userland.tensors(), landscape.random_directions(model, 1), x="-1:1:4",
                           progress=False)
    assert s1.plot() is not None
    with pytest.raises(UserError, match="no metric"):
        s1.plot(metric="nope")


def test_auto_axis_finds_where_the_loss_rises():
    model = userland.make_mlp()
    d = landscape.random_directions(model, n=1)
    s = landscape.surface(model, userland.tensors(), d, x="auto:9", auto_rise=0.5, progress=False)
    half = s.report["auto_range"]["x"]
    assert s.x[0] == -half and s.x[-1] == half and len(s.x) == 9
    centre, edge = s.values["loss"][4], max(s.values["loss"][0], s.values["loss"][-1])
    assert edge - centre >= 0.5  # the rise is reached at the edge (the search stops within 1/32 of it)


def test_off_centre_minimum_is_reported(capsys):
    model = nn.Linear(8, 3)
    x, y = userland.tensors()
    d = {"bias": torch.tensor([0.0, 0.0, 1.0]), "weight": torch.zeros(3, 8)}
    landscape.surface(model, (x, y), [d], x="-3:3:7", progress=False)
    assert "not at the centre" in capsys.readouterr().out


def _weights_file(model, path, nest=True):
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state} if nest else model.state_dict(), path)


@pytest.mark.slow
def test_cli_on_foreign_weights_equals_the_api_and_two_processes_equal_one(tmp_path):
    model = userland.make_mlp()
    _weights_file(model, tmp_path / "w.pt")
    args = [str(tmp_path / "w.pt"), "--model", "tests.userland:make_mlp", "--data", "tests.userland:loaders",
            "--x=-1:1:5", "--y=-1:1:3", "--no-progress", "--formats", "png", "--device", "cpu", "--seed", "2"]
    one = run_module("landscape.plot2d", *args, "--out", str(tmp_path / "one"))
    two = run_module("landscape.plot2d", *args, "--out", str(tmp_path / "two"), nproc=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert "centre:" in one.stdout and "|d1|/|theta0|" in one.stdout
    a = read_surface(str(tmp_path / "one" / "w_2d.h5".replace("w_2d", f"{tmp_path.name}_w_2d")))
    b = read_surface(str(tmp_path / "two" / f"{tmp_path.name}_w_2d.h5"))
    _close(a, b, rtol=0)
    assert list(a.values) == ["train_loss", "train_acc", "test_loss", "test_acc"]
    api = landscape.surface(userland.make_mlp(), userland.loaders(), landscape.random_directions(model, 2, seed=2),
                            x="-1:1:5", y="-1:1:3", progress=False)
    _close(a, api, rtol=1e-6)
    assert len([f for f in os.listdir(tmp_path / "one") if f.endswith(".png")]) == 16


@pytest.mark.slow
def test_cli_torchvision_model_with_a_plain_state_dict_and_a_users_metric(tmp_path):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    _weights_file(net, tmp_path / "r18.pt", nest=False)
    res = run_module("landscape.plot1d", str(tmp_path / "r18.pt"), "--model", "torchvision.models:resnet18",
                     "--model-kwargs", '{"num_classes": 10}', "--data", "tests.userland:images", "--x=-1:1:3",
                     "--metric", "tests.userland:margin", "--params", "layer4.*", "fc.*", "--no-progress",
                     "--formats", "png", "--out", str(tmp_path), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    s = read_surface(str(tmp_path / f"{tmp_path.name}_r18_1d.h5"))
    assert list(s.values) == ["margin"] and s.done.all()
    assert "BatchNorm" in res.stdout  # the report warns that running statistics stay put


@pytest.mark.slow
def test_cli_auto_axis_says_what_it_picked(mlp_ckpt, tmp_path):
    res = run_module("landscape.plot1d", mlp_ckpt, "--x", "auto:7", "--auto-rise", "0.2", "--no-progress",
                     "--formats", "png", "--out", str(tmp_path), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert "--x auto: loss rises by 0.2 within +-" in res.stdout
    s = read_surface(str(tmp_path / "mlp_run0_last_1d.h5"))
    assert s.report["auto_range"]["x"] == pytest.approx(s.x[-1])
    assert json.loads(json.dumps(s.report))["centre"]["train_loss"] > 0


def test_a_source_that_changes_its_size_between_passes_is_refused():
    class Shrinking:
        def __init__(self):
            self.passes = 0

        def __iter__(self):
            self.passes += 1
            x, y = userland.tensors(40 - 8 * self.passes)
            yield x, y

    model = userland.make_mlp()
    with pytest.raises(UserError, match="same samples at every point"):
        landscape.surface(model, Shrinking(), landscape.random_directions(model, 1), x="-1:1:3", progress=False)


@pytest.mark.parametrize("data, metric, message", [
    (None, "cross_entropy", "not a data source"),
    (iter([userland.tensors()]), "cross_entropy", "not a one-shot generator"),
    ([torch.empty(0, 8)], "cross_entropy", "holds no samples"),
    ([{"inputs": torch.randn(4, 8)}], "cross_entropy", "no labels"),
    ("tensors", userland.not_a_metric, "returns a dict of tensors"),
    ("tensors", userland.countless, "without 'count'"),
])
def test_bad_data_and_metrics_are_refused_in_one_line(data, metric, message):
    dict_batches = isinstance(data, list) and isinstance(data[0], dict)
    model = userland.KeywordMLP() if dict_batches else userland.make_mlp()
    data = userland.tensors() if isinstance(data, str) else data
    with pytest.raises(UserError, match=message):
        landscape.surface(model, data, landscape.random_directions(model, 1), x="-1:1:3", metrics=metric,
                          progress=False)


def test_loader_that_shuffles_is_refused_with_a_subset():
    model = userland.make_mlp()
    shuffled = DataLoader(TensorDataset(*userland.tensors()), batch_size=8, shuffle=True)
    with pytest.raises(ConfigError, match="shuffle=False"):
        landscape.surface(model, shuffled, landscape.random_directions(model, 1), x="-1:1:3", max_batches=2)


def _readme_block(marker: str) -> str:
    text = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    block = text.split(f"<!-- {marker} -->", 1)[1]
    return block.split("```", 2)[1].split("\n", 1)[1]


def _readme() -> str:
    return open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()


def _resolve(dotted: str) -> object:
    """A module, or a name of a module, by its dotted path."""
    import importlib

    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        parent, _, name = dotted.rpartition(".")
        return getattr(importlib.import_module(parent), name)


def test_every_name_the_readme_documents_exists_and_its_imports_are_public():
    """A documented name that disappears (or moves without the README) fails here: every `from landscape... import`
    in the README names a package's `__all__`, and every dotted landscape name in it resolves."""
    import re

    text = _readme()
    imports = re.findall(r"^from (landscape[\w.]*) import ([\w, ]+)$", text, re.M)
    assert imports
    for module, names in imports:
        front = _resolve(module)
        for name in (n.strip() for n in names.split(",")):
            assert name in front.__all__, f"README imports {name} from {module}, which does not list it in __all__"
    dotted = set(re.findall(r"\b(landscape(?:\.[A-Za-z_]\w*)+)", text)) - {"landscape.egg"}
    assert len(dotted) > 20
    missing = []
    for name in sorted(dotted):
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert missing == []


def test_the_readme_pieces_example_runs_on_a_model():
    prelude = "model = userland.make_mlp()\nx, y = userland.tensors()\n"
    scope = {"userland": userland}
    exec(prelude + _readme_block("readme-pieces-example"), scope)
    assert np.isfinite(scope["loss"]) and 0 <= scope["acc"] <= 100


@pytest.mark.slow
def test_the_readme_examples_run_as_written(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    api = subprocess.run([sys.executable, "-c", _readme_block("readme-api-example")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert api.returncode == 0, api.stderr
    assert "(7, 9)" in api.stdout and (tmp_path / "r18" / "surface_loss_contour.pdf").exists()
    cli = _readme_block("readme-cli-example").replace("python ", f"{sys.executable} ")
    res = subprocess.run(["bash", "-ec", cli], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "r18_cli" / f"{tmp_path.name}_r18_2d_loss_contour.png").exists()
    sharp = subprocess.run([sys.executable, "-c", _readme_block("readme-sharpness-example")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert sharp.returncode == 0, sharp.stderr
    assert "lambda_max" in sharp.stdout and "adaptive" in sharp.stdout


@pytest.mark.slow
def test_the_api_under_torchrun_splits_the_points_and_every_rank_gets_the_surface(tmp_path):
    import subprocess
    import sys

    from tests.conftest import cli_env

    script = tmp_path / "job.py"
    script.write_text(
        "import sys, torch, landscape\n"
        "from tests import userland\n"
        "m = userland.make_mlp()\n"
        "s = landscape.surface(m, userland.loaders(), landscape.random_directions(m, 2), x='-1:1:5', y='-1:1:4',\n"
        "                      out=sys.argv[1], device='cpu', progress=False)\n"
        "print('rank', torch.distributed.get_rank(), 'done', int(s.done.sum()), flush=True)\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path / "two.h5")]
    env = {**cli_env(), "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    assert "rank 0 done 20" in res.stdout and "rank 1 done 20" in res.stdout
    m = userland.make_mlp()
    one = landscape.surface(m, userland.loaders(), landscape.random_directions(m, 2), x="-1:1:5", y="-1:1:4",
                            progress=False)
    _close(read_surface(str(tmp_path / "two.h5")), one, rtol=1e-6)
