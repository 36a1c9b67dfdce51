import pytest

from sst_fast import SSTConfig


@pytest.mark.parametrize(
    "field,value",
    [
        ("backbone", "resnet101"),
        ("fusion", "sum"),
        ("shots", 0),
        ("shots", 1.5),
        ("channels", 0),
        ("aux_weight", -1.0),
        ("tune_step", -0.1),
        ("tune_step", float("nan")),
        ("dropout", 1.0),
        ("eps", 0.0),
        ("image_size", (0, 5)),
        ("image_size", (3, 4, 5)),
        ("ssm", "False"),
        ("aux_loss", 1),
        ("first_order", None),
        ("learnable_step", "yes"),
        ("check_inputs", 0),
        ("freeze_backbone", "no"),
        ("backbone_weights", 3),
    ],
)
def test_invalid_fields_are_named(field, value):
    with pytest.raises(ValueError, match=f"SSTConfig.{field} must be"):
        SSTConfig(**{field: value})


def test_learnable_step_needs_a_positive_start():
    with pytest.raises(ValueError, match="tune_step"):
        SSTConfig(tune_step=0.0, learnable_step=True)
    assert SSTConfig(tune_step=0.0).tune_step == 0.0


def test_defaults_follow_the_paper_and_freeze_pretrained_backbones():
    config = SSTConfig()
    assert (config.backbone, config.channels, config.image_size) == ("resnet50", 256, (321, 321))
    assert (config.tune_form, config.tune_step) == ("paper", 1.0), "Eq. 11 as written (docs/design.md §2)"
    assert config.fusion == "weighted" and config.ssm and config.aux_loss and not config.first_order
    assert config.freeze_backbone is True
    assert SSTConfig(backbone="tiny").freeze_backbone is False
    assert SSTConfig(backbone="tiny", freeze_backbone=True).freeze_backbone is True
    assert SSTConfig(image_size=65).image_size == (65, 65)


def test_dict_round_trip_and_unknown_keys():
    config = SSTConfig(backbone="vgg16", shots=5, fusion="max", image_size=(100, 120))
    assert SSTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown field"):
        SSTConfig.from_dict({"backbone": "tiny", "lr": 0.1})
