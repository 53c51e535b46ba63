"""The DataLoaders of a training run, made once per phase and kept across its epochs.

A loader with workers keeps them alive between epochs (persistent_workers): starting workers anew every epoch left
the cores idle while the first batches of each epoch were made. The batch size changes when the backbone is
unfrozen, so a loader serves one batch size: asking for another ends the old loader's workers and makes a new one.

Nothing about the batches depends on the workers: the sampler (EpochSampler) runs in the main process and its order
follows (seed, epoch); every augmentation draw follows (seed, epoch, index), and the dataset shares its epoch with
the workers (YoloDataset.set_epoch). Each loader draws its worker seeds from its own generator, so loaders leave the
global torch RNG alone.
"""
import torch
from torch.utils.data import DataLoader

from utils.core.distributed import DistInfo, EpochSampler
from utils.data.dataloader import YoloDataset, yolo_collate


class PhaseLoaders:
    """The training loader (shuffled, incomplete last batch dropped) and the validation loader (in order) of a
    run; ``close()`` ends their workers."""

    def __init__(self, *, train_set: YoloDataset, val_set: YoloDataset, num_workers: int, seed: int,
                 dist_info: DistInfo, pin_memory: bool):
        self.datasets = {"train": train_set, "val": val_set}
        self.num_workers, self.seed, self.dist, self.pin_memory = num_workers, seed, dist_info, pin_memory
        self.loaders: dict[str, DataLoader] = {}

    def train(self, *, epoch: int, batch_size: int, skip_batches: int = 0) -> DataLoader:
        """The training loader set to ``epoch``: its order and augmentation that epoch's; ``skip_batches``: the
        batches of this rank a resumed epoch has already trained on."""
        loader = self._loader("train", batch_size=batch_size)
        loader.sampler.set_epoch(epoch, skip=skip_batches * loader.batch_size)
        self.datasets["train"].set_epoch(epoch)
        return loader

    def val(self, *, batch_size: int) -> DataLoader:
        return self._loader("val", batch_size=batch_size)

    def _loader(self, split: str, *, batch_size: int) -> DataLoader:
        """The split's loader for ``batch_size`` images over all ranks; made (or remade for a new batch size) here."""
        per_rank = max(batch_size // self.dist.world_size, 1)
        loader = self.loaders.get(split)
        if loader is not None and loader.batch_size == per_rank:
            return loader
        self._end(split)
        dataset, shuffle = self.datasets[split], split == "train"
        sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=self.seed, rank=self.dist.rank,
                               world_size=self.dist.world_size)
        generator = torch.Generator().manual_seed(self.seed)
        self.loaders[split] = DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=self.num_workers,
                                         collate_fn=yolo_collate, drop_last=shuffle, pin_memory=self.pin_memory,
                                         persistent_workers=self.num_workers > 0, generator=generator)
        return self.loaders[split]

    def _end(self, split: str) -> None:
        """Ends the workers of the split's loader now, rather than whenever the garbage collector reaches it."""
        loader = self.loaders.pop(split, None)
        iterator = getattr(loader, "_iterator", None)  # set once a persistent loader has been iterated
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def close(self) -> None:
        for split in list(self.loaders):
            self._end(split)

