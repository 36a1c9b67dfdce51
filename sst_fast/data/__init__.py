"""Data: conversions of user images and masks to tensors (:mod:`sst_fast.data.transforms`)."""

from . import transforms

__all__ = ["transforms"]
