"""The packaged configurations say what they are, and those that claim the paper's recipe hold every value of it."""

from importlib import resources

import pytest

from sst_fast import SSTConfig
from sst_fast.engine.runconfig import CONFIG_PACKAGE, load_run_config, packaged_configs

# The paper's setting (Zhu et al., SST, IJCAI 2020), each value with the text it comes from.
PAPER_RECIPE = {
    ("optim", "optimizer"): ("sgd", "§5.1: 'Our model uses the SGD optimizer'"),
    ("optim", "lr"): (5e-4, "§5.1: 'The initial learning rate is set to 0.0005'"),
    ("optim", "weight_decay"): (5e-4, "§5.1: 'the attenuation rate is set to 0.0005' (read as weight decay)"),
    ("optim", "epochs"): (200, "§5.1: 'The model stops training after 200 epochs'"),
    ("optim", "batch_size"): (16, "§5.1: 'the batch size is set to 16'"),
    ("model", "image_size"): ((321, 321), "§5.1: 'All images are resized to 321 x 321'"),
    ("model", "backbone"): ("resnet50", "§5.1 Settings (VGG-16 or ResNet-50); §5.2: ResNet-50 for the ablations"),
    ("model", "tune_form"): ("paper", "§4.2, Eq. 11: R's = Rs - dLsup/dRs, as written"),
    ("model", "tune_step"): (1.0, "§4.2, Eq. 11: no factor on the gradient"),
    ("model", "ssm"): (True, "§5.2, Table 1: the full model, +SSM"),
    ("model", "aux_loss"): (True, "§5.2, Table 1: the full model, +SS loss"),
    ("model", "aux_weight"): (1.0, "§4.4: the auxiliary loss is added to the main loss, unweighted"),
    ("model", "fusion"): ("weighted", "§4.4, Eq. 14 and Table 2: IoU-weighted K-shot fusion"),
}
# Where §5.1 is silent: this project's choices, named as such on each configuration's first lines.
UNSTATED = {
    ("optim", "momentum"): (0.9, "momentum 0.9"),
    ("optim", "schedule"): ("constant", "a constant learning rate"),
}
CLAIMS_RECIPE = {"pascal", "coco", "fss"}  # the configurations that claim the paper's recipe
CLAIM = "with the paper's recipe (SST, IJCAI 2020, §5.1)"
VARIANT = "model.tune_form=relative model.tune_step=0.1"


def header(name: str) -> list[str]:
    """The comment lines that open a packaged configuration."""
    text = resources.files(CONFIG_PACKAGE).joinpath(f"{name}.yaml").read_text()
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def recipe_differences(config) -> list[str]:
    """Each value of PAPER_RECIPE and UNSTATED that ``config`` (a RunConfig) does not hold, with its source."""
    wrong = []
    for (section, key), (value, source) in {**PAPER_RECIPE, **UNSTATED}.items():
        held = getattr(getattr(config, section), key)
        if held != value:
            wrong.append(f"{section}.{key}={held!r}, not {value!r} ({source})")
    return wrong


def test_every_packaged_configuration_is_covered():
    assert set(packaged_configs()) == CLAIMS_RECIPE | {"synthetic"}


@pytest.mark.parametrize("name", sorted(CLAIMS_RECIPE))
def test_a_configuration_claiming_the_papers_recipe_holds_every_value_of_it(name):
    first = header(name)[0]
    assert CLAIM in first, f"{name}.yaml: the first line must claim the recipe it holds: {first!r}"
    assert "tune_form paper, tune_step 1.0" in first
    assert recipe_differences(load_run_config(name)) == []


@pytest.mark.parametrize("name", sorted(CLAIMS_RECIPE))
def test_the_recipes_unstated_choices_and_the_variant_are_named(name):
    text = "\n".join(header(name))
    assert "Where §5.1 is silent these are this project's choices" in text
    for _, words in UNSTATED.values():
        assert words in text
    assert VARIANT in text and "docs/step-study.md" in text
    variant = load_run_config(name, VARIANT.split())
    assert (variant.model.tune_form, variant.model.tune_step) == ("relative", 0.1)


@pytest.mark.parametrize(
    "override", ["optim.lr=0.001", "optim.momentum=0.5", "model.tune_form=relative", "model.tune_step=0.1",
                 "model.image_size=[473, 473]", "model.backbone=vgg16", "optim.schedule=poly"],
)  # fmt: skip
def test_the_check_fails_on_any_changed_value(override):
    wrong = recipe_differences(load_run_config("pascal", [override]))
    assert len(wrong) == 1 and wrong[0].startswith(override.split("=")[0])


def test_the_synthetic_configuration_says_it_is_not_the_recipe_and_pins_its_variant():
    first = header("synthetic")[0]
    assert first.startswith("# Not the paper's recipe") and "tune_form relative, tune_step 0.1" in first
    config = load_run_config("synthetic")
    assert (config.model.tune_form, config.model.tune_step) == ("relative", 0.1)
    assert recipe_differences(config)  # and it is indeed not the recipe


def test_fss_says_the_paper_has_no_table_of_it():
    assert "The paper has no FSS-1000 experiment" in header("fss")[0]


def test_the_library_default_is_the_papers_step():
    config = SSTConfig()
    assert (config.tune_form, config.tune_step) == ("paper", 1.0)
