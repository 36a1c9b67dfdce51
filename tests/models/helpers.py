import torch

import sst_fast


def tiny_config(**overrides):
    """A CPU-sized config; the tuning step in the paper's form unless a test asks for another (most tests
    here check Eq. 11 as written, with an alpha of their own)."""
    values = dict(backbone="tiny", channels=8, image_size=32, dropout=0.0, tune_form="paper")
    values.update(overrides)
    return sst_fast.SSTConfig(**values)


def episode(batch=2, shots=1, size=32, support_size=None, dtype=torch.float32, seed=0):
    """Random images with rectangular object masks (and an ignore band) in the VOC convention."""
    generator = torch.Generator().manual_seed(seed)
    support_size = support_size or size
    query = torch.randn(batch, 3, size, size, generator=generator, dtype=dtype)
    supports = torch.randn(batch, shots, 3, support_size, support_size, generator=generator, dtype=dtype)
    masks = torch.zeros(batch, shots, support_size, support_size, dtype=torch.uint8)
    query_mask = torch.zeros(batch, size, size, dtype=torch.uint8)
    for b in range(batch):
        for k in range(shots):
            top, left = torch.randint(0, support_size // 2, (2,), generator=generator).tolist()
            masks[b, k, top : top + support_size // 2, left : left + support_size // 2] = 1
            masks[b, k, top, left : left + support_size // 2] = 255
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        query_mask[b, top : top + size // 2, left : left + size // 2] = 1
    return query, supports, masks, query_mask
