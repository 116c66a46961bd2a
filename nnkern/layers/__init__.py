"""``nnkern.layers``: thin stateful layers over the kernels of ``nnkern.functional``."""

from nnkern.layers.activation import ELU, SELU, LeakyReLU, PReLU, ReLU, Sigmoid, Softmax, Tanh
from nnkern.layers.base import Layer, Parameter
from nnkern.layers.conv import Conv2D
from nnkern.layers.dense import Dense
from nnkern.layers.normalization import BatchNorm1D, BatchNorm2D
from nnkern.layers.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from nnkern.layers.regularization import Dropout, SpatialDropout2D
from nnkern.layers.reshape import Flatten
from nnkern.layers.shift_scale import Scale, Shift

__all__ = ["Layer", "Parameter", "Dense", "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D",
           "BatchNorm1D", "BatchNorm2D", "Flatten", "Dropout", "SpatialDropout2D", "ReLU",
           "LeakyReLU", "PReLU", "ELU", "SELU", "Sigmoid", "Tanh", "Softmax", "Shift", "Scale"]
