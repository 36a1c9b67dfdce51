import pytest
import torch

from sst_fast.data import Augment


def sample(height=30, width=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(3, height, width, generator=generator)
    mask = torch.randint(0, 2, (height, width), generator=generator)
    mask[:, :3] = 255
    return image, mask


def test_without_randomness_it_is_the_identity():
    image, mask = sample()
    out_image, out_mask = Augment((30, 40), scale=(1, 1), rotate=0, flip=False)(image, mask)
    assert torch.allclose(out_image, image, atol=1e-6) and torch.equal(out_mask, mask)


def test_flip_mirrors_image_and_mask_together():
    image, mask = sample()
    augment = Augment((30, 40), scale=(1, 1), rotate=0, flip=True)
    flipped = 0
    for seed in range(20):
        out_image, out_mask = augment(image, mask, torch.Generator().manual_seed(seed))
        if torch.equal(out_mask, mask.flip(-1)):
            flipped += 1
            assert torch.allclose(out_image, image.flip(-1), atol=1e-6)
        else:
            assert torch.equal(out_mask, mask)
    assert 3 <= flipped <= 17


@pytest.mark.parametrize("seed", range(10))
def test_masks_only_hold_source_labels_and_ignore(seed):
    image, mask = sample(seed=seed)
    augment = Augment((32, 32), scale=(0.7, 1.3), rotate=30)
    out_image, out_mask = augment(image, mask, torch.Generator().manual_seed(seed))
    assert out_image.shape == (3, 32, 32) and out_mask.shape == (32, 32) and out_mask.dtype == torch.long
    assert set(out_mask.unique().tolist()) <= {0, 1, 255}


def test_padding_is_ignore_in_the_mask_and_the_mean_colour_in_the_image():
    image, mask = sample()
    mask[:] = 1
    out_image, out_mask = Augment((30, 40), scale=(0.5, 0.5), rotate=0, flip=False)(image, mask)
    padded = out_mask == 255
    assert padded.sum() == 30 * 40 - 15 * 20
    assert (out_image[:, padded] == 0).all() and (out_mask[~padded] == 1).all()


def test_rotation_corners_are_ignored_and_the_centre_keeps_its_label():
    image = torch.zeros(3, 41, 41)
    mask = torch.zeros(41, 41, dtype=torch.long)
    mask[15:26, 15:26] = 1
    _, out_mask = Augment((41, 41), scale=(1, 1), rotate=45, flip=False)(image, mask, torch.Generator().manual_seed(0))
    assert out_mask[0, 0] == 255 and out_mask[-1, -1] == 255  # outside the source after any |angle| > ~3°
    assert out_mask[20, 20] == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"size": 0}, "Augment.size"), ({"scale": (1.2, 1.0)}, "Augment.scale"), ({"rotate": -1}, "Augment.rotate")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Augment(**{"size": 8, **kwargs})


def test_mismatched_mask_is_refused():
    with pytest.raises(ValueError, match="same size"):
        Augment(8)(torch.zeros(3, 8, 8), torch.zeros(8, 9, dtype=torch.long))
