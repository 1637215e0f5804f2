"""Datasets and input pipelines: Tiny ImageNet, Cars196, PASCAL VOC 2007 and the embedded Shapes196 and
ShapesMulti, read through NVIDIA DALI (GPU decoding) or a torchvision DataLoader with the same augmentation parameters.

>>> from recogfast.data import Shapes196, build_loader, MPerClassSampler
>>> train = Shapes196(split="train")
>>> loader = build_loader(train, train=True, batch_size=64, image_size=64)
>>> for images, labels in loader: ...
"""

from recogfast.data.augment import Augment
from recogfast.data.datasets import Cars196, ImageList, TinyImageNet
from recogfast.data.errors import DataError, SkippedSamplesWarning
from recogfast.data.folder import ImageFolder, folder_splits
from recogfast.data.multilabel import VOC2007, VOC_CLASSES, MultiLabelList, split_multilabel
from recogfast.data.loaders import TorchvisionLoader, build_loader, dali_available
from recogfast.data.samplers import MPerClassSampler, ShuffleBatchSampler
from recogfast.data.shapes import Shapes196
from recogfast.data.shapes_multi import MULTI_CLASSES, ShapesMulti
from recogfast.data.splits import split_by_class, split_by_image
from recogfast.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "TinyImageNet", "Cars196", "Shapes196", "ImageList", "ImageFolder", "folder_splits",
    "MultiLabelList", "VOC2007", "VOC_CLASSES", "ShapesMulti", "MULTI_CLASSES", "split_multilabel",
    "build_loader", "dali_available", "TorchvisionLoader", "Augment",
    "MPerClassSampler", "ShuffleBatchSampler", "split_by_image", "split_by_class",
    "DataError", "SkippedSamplesWarning",
    "IMAGENET_MEAN", "IMAGENET_STD",
]
