"""What both input pipelines share: the loader base class (epochs, batch sampler, device, skip reports)
and the torchvision-side image decoder that the DALI pipeline also uses to name a file it cannot decode.
recogfast.data.loaders (torchvision, and `build_loader`) and recogfast.data.dali both build on it."""

from __future__ import annotations

import warnings

import torch

from recogfast.data.augment import Augment
from recogfast.data.errors import DataError, SkipLog
from recogfast.data.transforms import TRAIN_SCALE, check_crop_scale


class Loader:
    """Common part of the two backends: epochs, sampler, device, output format, skip reports."""

    backend = "?"

    def __init__(self, dataset, batch_sampler, image_size, train, device, dtype, channels_last, on_error,
                 num_workers, seed, crop_scale=TRAIN_SCALE[0], augment=None):
        self.crop_scale = check_crop_scale(crop_scale)
        if augment is not None and not isinstance(augment, Augment):
            raise TypeError(f"augment must be a recogfast.data.augment.Augment, got {type(augment).__name__}")
        self.augment = Augment() if augment is None else augment
        self.dataset, self.batch_sampler = dataset, batch_sampler
        self.image_size, self.train = image_size, train
        self.device, self.dtype, self.channels_last = device, dtype, channels_last
        self.on_error, self.num_workers, self.seed = on_error, num_workers, seed
        self.epoch = 0
        self.skipped: list[tuple[str, str]] = []  # (path, reason) skipped in the last epoch

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by the next iteration (otherwise each iteration advances it by one)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        self.batch_sampler.set_epoch(self.epoch)
        return len(self.batch_sampler)

    def __iter__(self):
        self.batch_sampler.set_epoch(self.epoch)
        skips = SkipLog()
        try:
            yield from self._iterate(self.epoch, skips)
        finally:
            self.skipped = skips.items
        self.epoch += 1
        skips.report(self.backend)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(images={len(self.dataset)}, train={self.train}, size={self.image_size}, "
                f"device={self.device}, dtype={self.dtype}, workers={self.num_workers})")


def decode_rgb(data: bytes, path: str = "<bytes>") -> torch.Tensor:
    """JPEG (incl. grayscale and CMYK) or PNG bytes → uint8 [3, H, W] RGB; DataError naming the path."""
    from torchvision.io import ImageReadMode, decode_jpeg, decode_png

    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders in favour of torchcodec; they still are the
            # libjpeg-turbo / libpng decoders this backend is specified with.
            warnings.simplefilter("ignore", DeprecationWarning)
            if data[:2] == b"\xff\xd8":
                return decode_jpeg(encoded, mode=ImageReadMode.RGB)
            return decode_png(encoded, mode=ImageReadMode.RGB)
    except RuntimeError as err:
        raise DataError(f"cannot decode image file {path}: {err}", path) from err
