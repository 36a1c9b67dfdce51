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
        (["data.val_episodes=99999999999999999999"], r"data\.val_episodes must be an integer from 1 to 10000000"),
        (["optim.episodes_per_epoch=10000001"], r"optim\.episodes_per_epoch must be an integer from 1 to 10000000"),
        (["optim.epochs=10000001"], r"optim\.epochs must be an integer from 1 to 10000000"),
        (["optim.batch_size=100000"], r"optim\.batch_size=100000 is more than an epoch \(.*episodes_per_epoch=800\)"),
        (["optim.episodes_per_epoch=null", "optim.batch_size=10000001"], r"optim\.batch_size must be an integer from"),
        (["run.seed=18446744073709551616"], r"run\.seed must be an integer from 0 to 2\*\*64 - 1"),
        (["data.workers=100000"], r"data\.workers must be an integer from 0 to 1024"),
        (["run.threads=100000"], r"run\.threads must be an integer from 1 to 1024"),
        (["data.options={seed: 1, seed: 2}"], r"'data\.options=\{seed: 1, seed: 2\}'.* sets data\.options\.seed twice"),
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


def test_counts_up_to_their_maximum_are_accepted():
    from sst_fast.engine.runconfig import MAX_COUNT, MAX_THREADS

    config = load_run_config(
        "synthetic",
        [
            f"data.val_episodes={MAX_COUNT}",
            f"optim.episodes_per_epoch={MAX_COUNT}",
            f"optim.batch_size={MAX_COUNT}",
            f"optim.epochs={MAX_COUNT}",
            f"data.workers={MAX_THREADS}",
            f"run.threads={MAX_THREADS}",
            f"run.seed={2**64 - 1}",
        ],
    )
    assert config.optim.batch_size == config.optim.episodes_per_epoch == MAX_COUNT == 10**7


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("optim:\n  lr: 0.1\nrun:\n  seed: 1\noptim:\n  epochs: 2\n", "optim", (1, 5)),
        ("optim:\n  lr: 0.1\n  momentum: 0\n  lr: 0.2\n", "optim.lr", (2, 4)),
        ('optim:\n  lr: 0.1\n  "lr": 0.2\n', "optim.lr", (2, 3)),
        ("data:\n  options:\n    seed: 1\n    seed: 2\n", "data.options.seed", (3, 4)),
        ("model: {image_size: [64, 64], image_size: [32, 32]}\n", "model.image_size", (1, 1)),
    ],
)
def test_a_key_twice_in_a_config_file_is_an_error_naming_the_key_and_the_file(tmp_path, text, key, lines):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_run_config(str(path))
    assert str(raised.value) == (
        f"config: {path} sets {key} twice (lines {lines[0]} and {lines[1]}): a key may appear once in a mapping"
    )


def test_yaml_merge_keys_still_override_what_they_merge(tmp_path):
    path = tmp_path / "merged.yaml"
    path.write_text("base: &base {lr: 0.1, momentum: 0.5}\noptim:\n  <<: *base\n  lr: 0.2\n")
    assert read_config_file(str(path))["optim"] == {"lr": 0.2, "momentum": 0.5}
