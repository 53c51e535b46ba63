"""train.py's settings resolved and checked before a run starts: the checkpoint's config as the base of a resumed
run, the folder a resumed run writes to, the default classes file, and the settings that would leave nothing to
train."""
import dataclasses
import sys
from pathlib import Path

from nets.yolo_training import check_loss_settings
from utils.core.config import ConfigError, resolve_settings
from utils.infer.checkpoint import is_project_checkpoint, read_checkpoint


def resolve_training_config(config_class: type, argv: list[str] | None):
    """train.py's settings as a ``config_class`` (train.TrainConfig); with ``--resume`` the checkpoint's config is
    the base, argv overrides it, and the run writes into the checkpoint's folder unless argv names a --save_dir."""
    argv = sys.argv[1:] if argv is None else list(argv)
    config = resolve_settings(config_class, argv)
    trained_epochs = None
    if config.resume:
        checkpoint = read_checkpoint(config.resume)
        if not is_project_checkpoint(checkpoint):
            raise ConfigError(f"--resume={config.resume}: not a checkpoint written by train.py")
        config = resolve_settings(config_class, argv, base=checkpoint["config"])
        if not given_on_command_line("save_dir", argv):
            # The folder stored in the checkpoint (or a config file) is where the run was first trained: a copied
            # folder resumes into itself, never into the original.
            config = dataclasses.replace(config, save_dir=str(Path(config.resume).parent))
        trained_epochs = checkpoint.get("epoch")
    if len(config.input_shape) != 2 or config.input_shape[0] % 32 or config.input_shape[1] % 32:
        raise ConfigError(f"input_shape={config.input_shape}: needs [h, w], both multiples of 32")
    for key in ("val_period", "eval_period", "save_period"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{key}={getattr(config, key)}: needs at least 1")
    check_loss_settings(config)  # contradictory loss choices stop here, before any data is read
    check_epochs_to_train(config, trained_epochs=trained_epochs)
    return with_default_classes(config)


def with_default_classes(config):
    """``config`` with classes_path set to the default classes file when it is None and no dataset names the
    classes: run folders and checkpoints then store the file the run used, as they did before None meant "the
    dataset's names", so earlier runs are reused and resumed as before."""
    from utils.train.data_source import DEFAULT_CLASSES_PATH

    if config.classes_path is None and not config.dataset:
        return dataclasses.replace(config, classes_path=DEFAULT_CLASSES_PATH)
    return config


def check_epochs_to_train(config, *, trained_epochs: int | None) -> None:
    """A ConfigError, with the fix, when the settings leave no epoch to train; ``trained_epochs``: the epochs a
    resumed checkpoint has finished (None for a fresh run)."""
    if config.init_epoch < 0:
        raise ConfigError(f"init_epoch={config.init_epoch}: needs at least 0")
    if trained_epochs is not None and trained_epochs >= config.unfreeze_epoch:
        raise ConfigError(f"--resume={config.resume}: that run has already trained {trained_epochs} "
                          f"epoch{'s' * (trained_epochs != 1)}, and unfreeze_epoch={config.unfreeze_epoch} (the "
                          f"total) leaves nothing more to train; to train longer, resume with --unfreeze_epoch=N "
                          f"(N > {trained_epochs})")
    if trained_epochs is None and config.unfreeze_epoch <= config.init_epoch:
        raise ConfigError(f"unfreeze_epoch={config.unfreeze_epoch}: nothing to train; the total number of epochs "
                          f"must exceed init_epoch={config.init_epoch}")


def given_on_command_line(key: str, argv: list[str]) -> bool:
    """Whether ``argv`` sets ``key`` as --key=value (dashes or underscores)."""
    return any(arg.startswith("--") and arg[2:].split("=", 1)[0].replace("-", "_") == key for arg in argv)
