"""Tiny ``model.name: module.path:factory`` networks for tests/test_escape_hatches.py (imported by name)."""
from torch import nn

CALLS: list[dict] = []  # the keyword arguments of each call, newest last


def tiny_net(num_classes, in_channels, image_size):
    """Names num_classes, in_channels and image_size: receives all three."""
    CALLS.append({"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size})
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(4, num_classes))


def only_classes(num_classes):
    CALLS.append({"num_classes": num_classes})
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(3, num_classes))


def with_dropout(num_classes, dropout):
    CALLS.append({"num_classes": num_classes, "dropout": dropout})
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(dropout), nn.Linear(3, num_classes))


def not_a_module(num_classes):
    return "a string"


NOT_CALLABLE = 3
