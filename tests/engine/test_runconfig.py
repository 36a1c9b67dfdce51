import pytest

from sst_fast import SSTConfig
from sst_fast.engine.runconfig import (
    ConfigError,
    RunConfig,
    apply_overrides,
    load_run_config,
    packaged_configs,
    read_config_file,
)


def test_defaults_are_the_papers_recipe():
    config = RunConfig()
    assert (config.optim.optimizer, config.optim.lr, config.optim.momentum, config.optim.weight_decay) == (
        "sgd",
        5e-4,
        0.9,
        5e-4,
    )
    assert (config.optim.batch_size, config.optim.epochs) == (16, 200)
    assert config.model == SSTConfig() and config.model.image_size == (321, 321)


@pytest.mark.parametrize("name", ["pascal", "coco", "fss", "synthetic"])
def test_packaged_configs_load_and_round_trip_through_yaml(name, tmp_path):
    assert name in packaged_configs()
    config = load_run_config(name)
    assert config.data.dataset == name
    path = config.save(tmp_path / "config.yaml")
    assert load_run_config(str(path)) == config


def test_overrides_are_typed_by_yaml_and_reach_nested_options():
    config = load_run_config(
        "synthetic",
        [
            "optim.lr=1e-3",
            "model.ssm=false",
            "model.image_size=[96, 80]",
            "data.options.train_images=300",
            "run.threads=null",
            "data.fold=2",
        ],
    )
    assert config.optim.lr == 1e-3 and config.model.ssm is False and config.model.image_size == (96, 80)
    assert config.data.options["train_images"] == 300 and config.run.threads is None and config.data.fold == 2


def test_overrides_do_not_touch_the_input():
    values = {"optim": {"lr": 0.1}}
    assert apply_overrides(values, ["optim.lr=0.2"]) == {"optim": {"lr": 0.2}}
    assert values == {"optim": {"lr": 0.1}}


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["optim.lrr=1"], r"optim\.lrr"),
        (["optimizer.lr=1"], "unknown section 'optimizer'"),
        (["optim.lr"], "section.key=value"),
        (["lr=0.1"], "section.key=value"),
        (["optim.lr=abc"], "optim.lr must be"),
        (["optim.lr=0"], "optim.lr must be > 0"),
        (["optim.optimizer=adam"], "optim.optimizer"),
        (["optim.schedule=cosine"], "optim.schedule"),
        (["model.backbone=resnet9"], "backbone must be one of"),
        (["model.channels=-1"], "channels"),
        (["data.dataset=imagenet"], "data.dataset"),
        (["data.val_fraction=1"], "data.val_fraction"),
        (["data.workers=-1"], "data.workers"),
        (["data.options=3"], "data.options"),
        (["run.device=tpu"], "run.device"),
        (["run.log_every=0"], "run.log_every"),
        (["optim.lr.x=1"], "not a section"),
        (["model.image_size=[1, 2, 3]"], "image_size"),
        (["model.tune_form=sum"], "tune_form must be one of"),
        (["optim.step_lr=0"], "optim.step_lr must be"),
    ],
)
def test_bad_overrides_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_run_config("synthetic", overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="neither a file nor a packaged configuration"):
        read_config_file(str(tmp_path / "missing.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_config_file(str(tmp_path / "list.yaml"))
    (tmp_path / "broken.yaml").write_text("data: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_config_file(str(tmp_path / "broken.yaml"))
    (tmp_path / "empty.yaml").write_text("")
    assert load_run_config(str(tmp_path / "empty.yaml")) == RunConfig()
    (tmp_path / "section.yaml").write_text("optim: 3\n")
    with pytest.raises(ConfigError, match="section 'optim' must be a mapping"):
        load_run_config(str(tmp_path / "section.yaml"))
