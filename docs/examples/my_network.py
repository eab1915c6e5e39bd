"""A network of your own for SplitWire: ``--model my_network:build`` (with this folder on
``PYTHONPATH``).

Return ``(torch.nn.Sequential, cut)``, the cut being the name or index of the last layer the
data owner runs, or a ready ``actors.nets.descriptor.SplitNetwork``. The lab draws the initial
weights under ``--seed``, derives the cut's shape by a dry run, and refuses (one line, exit 2)
a network that does not take the dataset's input shape or does not end in its classes.

    PYTHONPATH=docs/examples python -m actors.simulate --model my_network:build \\
        --protocol plaintext --attack conv --epochs 3
"""

from collections import OrderedDict

from torch import nn


def build() -> tuple[nn.Sequential, str]:
    """A small conv net with BatchNorm in the owner's part (its running statistics travel
    with the weights), split after ``relu1``: the cut is 16x14x14 (rank 4 with the batch)."""
    layers = OrderedDict([
        ("conv1", nn.Conv2d(1, 16, 3, padding=1)), ("bn1", nn.BatchNorm2d(16)),
        ("pool1", nn.MaxPool2d(2)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(16, 32, 3, padding=1)), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)), ("flatten", nn.Flatten()),
        ("fc", nn.Linear(32 * 7 * 7, 10)),
    ])
    return nn.Sequential(layers), "relu1"
