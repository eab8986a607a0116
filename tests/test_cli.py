"""CLI wiring: flags reach the config, and deploy commands reach cxrflow.deploy with exact arguments."""

import os

import pytest
import yaml

from cxrflow import cli, cli_flags, deploy
from cxrflow.config import ConfigError


def test_run_flags_reach_the_config(tmp_path):
    args = cli.build_parser().parse_args([
        "run", "--data", "folders:rel/path", "--data", "ieee:gs://b/ieee", "--output", str(tmp_path),
        "--classes", "covid,normal", "--image-size", "224", "--model", "mobilenetv2", "--weights", "imagenet",
        "--epochs", "7", "--batch-size", "4", "--resample", "over", "--seed", "3", "--views", "PA,AP",
        "--finding-map", "Pneumonia/Viral=normal", "--kaggle-val-as-eval", "--min-recall", "covid=0.95",
        "--trainer-accelerator", "NVIDIA_TESLA_T4", "--trainer-gpus", "2", "--beam-arg=--runner=DirectRunner",
        "--ingest-cache", "rel/cache",
    ])
    config = cli_flags.config_from_args(args, str(tmp_path))
    assert config.data == (f"folders:{os.path.abspath('rel/path')}", "ieee:gs://b/ieee")
    assert (config.classes, config.image_size, config.model, config.weights) == (
        ("covid", "normal"), 224, "mobilenetv2", "imagenet")
    assert (config.epochs, config.batch_size, config.resample, config.seed) == (7, 4, "over", 3)
    assert config.views == ("PA", "AP") and config.finding_map == "Pneumonia/Viral=normal"
    assert config.kaggle_merge_val is False and config.min_recall == (("covid", 0.95),)
    assert config.trainer_resources.accelerator_count == 2
    assert config.serving_dir == os.path.join(str(tmp_path), "serving")
    assert config.beam_args == ("--runner=DirectRunner",)
    assert config.ingest_cache == os.path.abspath("rel/cache")


@pytest.mark.parametrize(("flags", "expected"), [
    (["--operating-point", "normal=0.9", "--operating-max-offset", "1.5"], ((("normal", 0.9),), 1.5)),
    (["--operating-point", "none", "--early-stopping-metric", "val_macro_recall"], ((), 2.0)),
    (["--operating-point", "covid=0.95", "--classes", "bacterial,normal"], ((), 2.0)),  # not a class: dropped
])
def test_operating_point_flags_reach_the_config(tmp_path, flags, expected):
    args = cli.build_parser().parse_args(["run", "--data", "folders:x", "--output", str(tmp_path), *flags])
    config = cli_flags.config_from_args(args, str(tmp_path))
    assert (config.operating_point, config.operating_max_offset) == expected
    assert config.early_stopping_metric == ("val_macro_recall" if "--early-stopping-metric" in flags else "val_loss")


@pytest.mark.parametrize(("flag", "field", "default", "given"), [
    ("--ema-momentum", "ema_momentum", 0.98, 0.0),
    ("--label-smoothing", "label_smoothing", 0.0, 0.1),
    ("--dropout", "dropout", 0.3, 0.5),
])
def test_trainer_float_flags_reach_the_config_and_are_checked(tmp_path, flag, field, default, given):
    parse = cli.build_parser().parse_args
    base = ["run", "--data", "folders:x", "--output", str(tmp_path)]
    assert getattr(cli_flags.config_from_args(parse(base), str(tmp_path)), field) == default
    assert getattr(cli_flags.config_from_args(parse([*base, flag, str(given)]), str(tmp_path)), field) == given
    with pytest.raises(ConfigError, match=field):
        cli_flags.config_from_args(parse([*base, flag, "1"]), str(tmp_path))


def test_cnn_norm_warmup_and_min_epochs_flags_reach_the_config(tmp_path):
    parse = cli.build_parser().parse_args
    base = ["run", "--data", "folders:x", "--output", str(tmp_path)]
    default = cli_flags.config_from_args(parse(base), str(tmp_path))
    assert (default.cnn_norm, default.warmup_epochs, default.early_stopping_min_epochs) == ("none", 0, 10)
    config = cli_flags.config_from_args(parse([*base, "--cnn-norm", "group", "--warmup-epochs", "2",
                                               "--early-stopping-min-epochs", "0"]), str(tmp_path))
    assert (config.cnn_norm, config.warmup_epochs, config.early_stopping_min_epochs) == ("group", 2, 0)
    with pytest.raises(ConfigError, match="custom CNN only"):
        cli_flags.config_from_args(parse([*base, "--cnn-norm", "group", "--model", "resnet50"]), str(tmp_path))


def test_compile_writes_the_yaml_with_the_image(tmp_path):
    out = tmp_path / "p.yaml"
    assert cli.main(["compile", "--output", str(out), "--base-image", "reg/cxrflow:1"]) == 0
    spec = yaml.safe_load(out.read_text())
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {"reg/cxrflow:1"}


def test_submit_and_schedule_call_deploy_with_exact_arguments(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(deploy, "submit_vertex", lambda pkg, **kw: calls.append(("submit_vertex", pkg, kw)) or "job")
    monkeypatch.setattr(deploy, "schedule_kfp", lambda pkg, host, **kw: calls.append(("schedule_kfp", pkg, host, kw))
                        or "rr")
    assert cli.main(["submit", "--vertex", "--package", "p.yaml", "--project", "proj", "--region", "europe-west4",
                     "--pipeline-root", "gs://b/root"]) == 0
    assert cli.main(["schedule", "--kfp-host", "http://kfp:8080", "--package", "p.yaml", "--cron", "0 3 * * 1"]) == 0
    assert calls == [
        ("submit_vertex", "p.yaml", {"project": "proj", "region": "europe-west4", "pipeline_root": "gs://b/root",
                                     "display_name": "cxrflow", "service_account": None}),
        ("schedule_kfp", "p.yaml", "http://kfp:8080", {"cron": "0 3 * * 1", "experiment": "cxrflow"}),
    ]


@pytest.mark.parametrize("argv, message", [
    (["schedule", "--kfp-host", "http://kfp:8080", "--package", "P", "--cron", "61 * * * *"], "cron"),
    (["submit", "--vertex", "--package", "P", "--region", "us-central1", "--pipeline-root", "gs://b/r"], "project"),
    (["submit", "--package", "P"], "choose one target"),
])
def test_deploy_mistakes_are_one_line_errors(tmp_path, capsys, monkeypatch, argv, message):
    (tmp_path / "P").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_unforeseen_error_is_one_line_not_a_traceback(monkeypatch, capsys):
    from cxrflow import pipeline

    def boom(config, path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(pipeline, "compile_pipeline", boom)
    monkeypatch.delenv("CXRFLOW_DEBUG", raising=False)
    assert cli.main(["compile", "--output", "/srv/p.yaml"]) == 1
    err = capsys.readouterr().err
    assert "unexpected PermissionError" in err and "Traceback" not in err
