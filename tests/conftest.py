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
