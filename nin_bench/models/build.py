"""A suite variant's model: the one bridge from a grid point (`nin_bench.suite.variants`) to `build_model`."""
from __future__ import annotations

from torch import nn

from nin_bench.models.nin import build_model
from nin_bench.suite.variants import DataShape, Variant


def build_variant_model(variant: Variant, shape: DataShape) -> nn.Module:
    """Build the variant's model (CPU, float32) for its data shape.

    Args:
        variant: the grid point (its `model` settings give the architecture axes).
        shape: what the model sees (channels, input side, classes).
    """
    m = variant.config.model
    return build_model(m.preset, n_1x1=m.n_1x1, head=m.head, dropout=m.dropout,
                       head_dropout=m.head_dropout, in_channels=shape.channels,
                       num_classes=shape.num_classes, width=m.width, batchnorm=m.batchnorm, fc_hidden=m.fc_hidden,
                       input_size=shape.side, init=m.init)
