import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_close(actual, expected, rtol, atol, what=""):
    """torch.testing.assert_close that also names the first mismatching index and both values."""
    try:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
    except AssertionError as error:
        diff = (actual - expected).abs()
        bad = diff > atol + rtol * expected.abs()
        index = tuple(int(i) for i in bad.nonzero()[0]) if bad.any() else ()
        where = f" first mismatch at {index}: {actual[index].item()!r} vs {expected[index].item()!r};" if index else ""
        raise AssertionError(f"{what}{where} max abs error {diff.max().item():.3e}\n{error}") from None


def balance_classifier(model, query, support_images, support_masks, on="query"):
    """Shift an untrained model's classifier bias so that half of the pixels are foreground.

    An untrained head scores nearly every pixel alike, so its argmax is all one class and any
    check on predicted masks or IoU fusion weights would compare constants. The shift only moves
    the decision threshold to the median foreground margin of this episode's query (``on="query"``)
    or of its supports' self-segmentation (``on="supports"``, which sets the IoU fusion weights).
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(query, support_images, support_masks)
        logits = out.logits if on == "query" else out.support_logits.flatten(0, 1)
        margin = (logits[:, 1] - logits[:, 0]).median()
        model.decoder.classifier.bias[1] -= margin
    model.train(was_training)
    return model


def foreground_fraction(prediction):
    return float((torch.as_tensor(prediction) == 1).float().mean())
