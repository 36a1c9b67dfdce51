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


def model_tolerance(model, inputs, dtype, gradients=False, backbone=False):
    """tests.tolerance.between for two computations of ``model(*inputs)`` (and its gradients), from its sums.

    Counted with hooks on one forward of ``model`` (the reference: its relation convolution is a module
    call). A rounding difference arises where the two compute differently, from the relation on, and
    every later sum adds its own: each convolution's ``C_in / groups * k * k`` terms per output, and with
    ``gradients`` (for trainable ones) its input gradient's ``C_out * k * k`` and its weight gradient's
    ``N * H_out * W_out`` (random signs); the pools over a feature map and the losses' means over pixels
    (one sign). The fast model and the reference run the same backbone and embedding on the same shapes,
    so those forward sums are not counted unless ``backbone=True`` (a comparison across devices or layouts).
    """
    from tests.tolerance import between

    mixed, same = [], []
    shared = {id(m) for part in (model.backbone, model.embed) for m in part.modules()}

    def count(module, args, output):
        kh, kw = module.kernel_size
        if backbone or id(module) not in shared:
            mixed.append(module.in_channels // module.groups * kh * kw)
        if gradients and module.weight.requires_grad:
            mixed.append(module.out_channels // module.groups * kh * kw)
            mixed.append(output.shape[0] * output.shape[-2] * output.shape[-1])

    def pools(module, args, output):
        same.append(output.shape[-2] * output.shape[-1])

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks.append(model.relation.conv.register_forward_hook(pools))
    was_training = model.training
    model.eval()  # no dropout draws, no BatchNorm statistics updated: the model is left as it was
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    query, supports = inputs[0], inputs[1]
    same += [query.shape[0] * query.shape[-2] * query.shape[-1], supports.shape[-2] * supports.shape[-1]]
    return between(dtype, mixed, same)


def input_gradient_terms(*parts):
    """One backward through ``parts``: each convolution's input gradient sums C_out / groups * k * k terms."""
    convs = [m for part in parts for m in part.modules() if isinstance(m, torch.nn.Conv2d)]
    return [m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] for m in convs]


def tuning_tolerance(reference, inputs, dtype, gradients=False, backbone=False):
    """:func:`model_tolerance` of a forward that takes the tuning step, counted on ``reference`` (its relation
    convolution is a module call), plus the step's inner gradient: one backward through the supports' relation
    and decoder (each convolution's input gradient) and the pooled gradient map (h * w terms of both signs; the
    fused op sums the same h * w and C_out * k * k terms in its own order)."""
    from tests.tolerance import between

    maps = []  # the relation's output maps' h * w: the supports' (pooled) and the query's
    hook = reference.relation.conv.register_forward_hook(lambda m, args, out: maps.append(out[0, 0].numel()))
    try:
        tol = model_tolerance(reference, inputs, dtype, gradients=gradients, backbone=backbone)
    finally:
        hook.remove()
    return tol + between(dtype, mixed=[*input_gradient_terms(reference.relation, reference.decoder), max(maps)])
