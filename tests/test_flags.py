"""One CLI vocabulary: the same flag means the same field with the same choices in every command, every config
field is a flag, old spellings keep working for a release, and re-plotting a file loads neither torch nor the
trainer."""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

from landscape.base.config import SurfaceConfig
from landscape.base.figure_config import PlotConfig
from landscape.core.surface_file import read_surface
from landscape.pipelines.from_checkpoint import run_surface
from tests.conftest import SINGLE, cli_env
from trainers.config import TrainConfig

COMMANDS = ["landscape.plot1d", "landscape.plot2d", "landscape.trajectory", "landscape.hessian_map",
            "landscape.sharpness", "landscape.export", "trainers.train", "trainers.sweep", "figures.flat_vs_sharp",
            "figures.batch_scaling", "figures.generalization_gap", "figures.connectivity",
            "figures.trajectory", "figures.hessian_directions", "landscape.connect", "trainers.branch",
            "figures.critical_batch"]
OWN_CHOICES = {"--preset"}  # every figure script has presets of its own: same meaning, other names
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parser_of(module: str) -> argparse.ArgumentParser:
    return importlib.import_module(module).get_parser()


def visible_flags(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Flag -> action, without --help and the hidden old spellings."""
    return {s: a for a in p._actions if a.help != argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
            for s in a.option_strings}


def test_a_flag_means_the_same_field_with_the_same_choices_in_every_command():
    seen: dict[str, tuple] = {}
    by_field: dict[str, set[str]] = {}
    for module in COMMANDS:
        for flag, a in visible_flags(parser_of(module)).items():
            choices = tuple(a.choices) if a.choices and flag not in OWN_CHOICES else None
            meaning = (a.dest, choices, a.type or str)  # argparse reads type None as str
            assert seen.setdefault(flag, meaning) == meaning, f"{flag} in {module}: {meaning} vs {seen[flag]}"
            by_field.setdefault(a.dest, set()).add(a.option_strings[0])  # --x and its --no-x are one name
    assert {f: s for f, s in by_field.items() if len(s) > 1} == {}  # one name per field
    assert "--eval-batch-size" in seen and "--loss-max" in seen and "--vmax" not in seen and "--root" not in seen
    assert seen["--batch-size"][0] == "batch_size"  # the trainer's global batch; the evaluation batch has its own


@pytest.mark.parametrize("cls, module, without", [
    (SurfaceConfig, "landscape.plot2d", {"checkpoint", "target", "trajectory", "channels_last"}),  # positionals
    (SurfaceConfig, "landscape.trajectory", {"checkpoint", "target", "trajectory", "channels_last", "plane", "edges",
                                             "directions_file", "dir_type", "norm", "seed", "orthogonal",
                                             "auto_rise", "align", "align_spec"}),  # it sets its own directions
    (PlotConfig, "landscape.plot2d", {"log"}), (PlotConfig, "landscape.plot1d", {"levels"}),
    (TrainConfig, "trainers.train", set())])
def test_every_config_field_is_a_flag_of_its_command(cls, module, without):
    dests = {a.dest for a in parser_of(module)._actions}
    assert {f.name for f in dataclasses.fields(cls)} - without <= dests


def test_enumerated_flags_offer_their_choices():
    flags = visible_flags(parser_of("landscape.plot2d")) | visible_flags(parser_of("trainers.train"))
    for flag in ("--norm", "--ignore", "--dir-type", "--splits", "--precision", "--device", "--formats",
                 "--optimizer", "--schedule", "--dataset"):
        assert flags[flag].choices, flag


@pytest.mark.parametrize("module, old, new", [("landscape.plot2d", "--vmax", "--loss-max"),
                                              ("landscape.plot1d", "--batch-size", "--eval-batch-size"),
                                              ("landscape.plot2d", "--loss", "--metric"),
                                              ("trainers.sweep", "--root", "--out")])
def test_flags_removed_in_0_7_are_refused_in_one_line_naming_the_new_one(module, old, new, capsys):
    with pytest.raises(SystemExit) as exc:
        parser_of(module).parse_args(["c.pt", old, "3"] if module.startswith("landscape") else [old, "r"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"{old} is now {new} (the old names were removed in 0.7)" in err


def test_removed_names_are_gone_from_the_code():
    """The 0.2- and 0.3-era aliases: console scripts, trainer module shims, the renamed-flag machinery."""
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    scripts = cfg["options.entry_points"]["console_scripts"]
    assert "train-ddp" not in scripts and "train-sweep" not in scripts
    for module in ("trainers.checkpoint", "trainers.models", "trainers.data", "trainers.ddp"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(module)
    import landscape.base.flags as flags
    assert not hasattr(flags, "add_renamed_flag") and not hasattr(flags, "renamed_command")


def test_console_scripts_are_named_like_their_modules():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    scripts = dict(line.split(" = ") for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines()
                   if " = " in line)
    current = {name: target for name, target in scripts.items() if target.endswith(":cli")}
    assert {name: target.split(":")[0].replace(".", "-").replace("_", "-") for name, target in current.items()} == {
        name: name for name in current}
    assert set(current.values()) == {f"{m}:cli" for m in COMMANDS if not m.startswith("figures")}
    for target in scripts.values():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr))


@pytest.mark.slow
def test_replotting_a_file_loads_neither_torch_nor_the_trainer(mlp_ckpt, tmp_path):
    two = run_surface(SurfaceConfig(mlp_ckpt, out=str(tmp_path), x="-1:1:3", y="-1:1:3", progress=False), SINGLE)
    one = run_surface(SurfaceConfig(mlp_ckpt, out=str(tmp_path), x="-1:1:3", progress=False), SINGLE)
    code = ("import sys\nfrom landscape import plot1d, plot2d\n"
            "plot2d.main([sys.argv[1], '--formats', 'png'])\nplot1d.main([sys.argv[2], '--formats', 'png'])\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'trainers', 'figures'}))")
    res = subprocess.run([sys.executable, "-c", code, two.path, one.path], capture_output=True, text=True,
                         env=cli_env(), cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "re-plotted" in res.stdout and "figures:" in res.stdout
    assert res.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_python_and_the_cli_make_the_same_interpolation(mlp_ckpt, mlp_ckpt_b, tmp_path):
    """Both move BatchNorm statistics along an interpolation (dir_type 'states') and take its default axis."""
    from landscape.plot1d import main

    main([mlp_ckpt, mlp_ckpt_b, "--out", str(tmp_path / "cli"), "--no-progress", "--formats", "png"])
    cfg = SurfaceConfig(mlp_ckpt, target=mlp_ckpt_b, out=str(tmp_path / "api"), progress=False)
    assert (cfg.dir_type, cfg.x) == ("states", "-0.5:1.5:41")
    api = read_surface(run_surface(cfg, SINGLE).path)
    cli = read_surface(cfg.path.replace(str(tmp_path / "api"), str(tmp_path / "cli")))
    assert cli.config["dir_type"] == api.config["dir_type"] == "states"
    for k in api.values:
        np.testing.assert_array_equal(api.values[k], cli.values[k], err_msg=k)


def test_each_request_is_made_of_small_pieces_and_each_command_takes_whole_pieces():
    """SurfaceConfig, PlotConfig and TrainConfig are unions of small frozen pieces, each field in exactly one; a
    command's flags are the fields of the pieces it takes, so no command skips fields or patches argparse."""
    import pathlib

    from landscape.base import config, figure_config
    from trainers import config as train_config

    for whole, pieces in [(SurfaceConfig, config.SURFACE_PIECES), (PlotConfig, figure_config.PLOT_PIECES),
                          (TrainConfig, [b for b in TrainConfig.__mro__[1:] if dataclasses.is_dataclass(b)])]:
        names = [f.name for p in pieces for f in dataclasses.fields(p)]
        assert sorted(names) == sorted(f.name for f in dataclasses.fields(whole)), whole
        assert all(issubclass(whole, p) for p in pieces) and max(len(dataclasses.fields(p)) for p in pieces) <= 16
    assert max(len(dataclasses.fields(p)) for p in config.SURFACE_PIECES) <= 6
    assert train_config.OptimFlags in TrainConfig.__mro__
    for module in ("landscape.plot1d", "landscape.plot2d", "landscape.trajectory", "landscape.hessian_map",
                   "landscape.connect", "landscape.sharpness"):
        taken = {f.name for p in importlib.import_module(module).PIECES for f in dataclasses.fields(p)
                 if "cli" in f.metadata}
        flags = {a.dest for a in parser_of(module)._actions if a.option_strings and a.dest != "help"}
        assert taken <= flags, module  # and the rest of its flags are its own (sharpness's measures, --tol...)
    root = pathlib.Path(__file__).resolve().parents[1]
    sources = [p.read_text() for pkg in ("landscape", "trainers", "figures") for p in (root / pkg).rglob("*.py")]
    assert not any("_option_string_actions" in s for s in sources)


def test_the_metric_names_a_request_accepts_are_the_metrics_the_runtime_builds():
    """The request is validated without torch (landscape.base.config.METRICS); the runtime builds each by name."""
    from landscape.base.config import METRICS as NAMES
    from landscape.runtime.metrics import METRICS

    assert tuple(METRICS) == NAMES
