"""Train YOLOv4 / YOLOv4-tiny on VOC-format annotation files or a dataset (VOC, YOLO txt, COCO json).

    python voc_annotation.py                      # once: VOCdevkit -> 2007_train.txt, 2007_val.txt, ...
    python train.py                               # the settings below
    python train.py --focal_loss=True --init_lr=0.02 --config=my_run.toml
    torchrun --nproc_per_node=2 train.py --distributed=True
    python train.py --resume=logs/last_epoch_weights.pth
    python train.py --dataset=datasets/my_yolo        # a YOLO-txt (data.yaml) or COCO-json dataset, or a VOCdevkit

Every setting below can be overridden by ``--key=value`` or a TOML/JSON file (``--config=FILE``);
unknown keys and wrong types are errors. The resolved config is printed, written to
``save_dir/config.json`` and stored in every checkpoint, so predict.py and get_map.py need no
repeated settings. Learning rates are for a batch of 64 and scaled linearly to the batch used.
"""
from typing import Literal

from utils.core.config import run_cli, settings_dataclass

seed: int = 11  # seeds model init, data order and augmentation: equal seeds give identical runs
device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
distributed: bool = False  # multi-GPU DDP; start with torchrun (set automatically when torchrun runs several processes)
sync_bn: bool = False  # SyncBatchNorm across GPUs under DDP (CUDA only)
fp16: bool = True  # mixed precision (autocast in amp_dtype); False trains in fp32
amp_dtype: Literal["auto", "float16", "bfloat16"] = "auto"  # auto: fp16 on CUDA, bf16 on CPUs with native bf16, or fp32
channels_last: bool | None = None  # weights and batches in NHWC layout; None: on with autocast (bf16 or fp16)
classes_path: str | None = None  # class names, one per line; None: the dataset's, else model_data/bccd_classes.txt
anchors_path: str | None = None  # None: the variant's default file; "auto": k-means on the training boxes
anchors_mask: list[list[int]] | None = None  # anchor indices per level, coarsest first; None: the variant's default
model: Literal["yolov4", "yolov4-tiny"] = "yolov4"  # the network
model_path: str = ""  # start weights: checkpoint of this project, published state_dict, darknet .weights; "" = none
cfg_path: str = ""  # the darknet .cfg of a .weights model_path (a partial file, e.g. yolov4.conv.137, loads its layers)
save_darknet: bool = False  # also write every saved checkpoint as darknet .weights + .cfg beside it
input_shape: list[int] = [416, 416]  # network input (h, w), multiples of 32
mosaic: bool = True  # Mosaic augmentation
mosaic_prob: float = 0.5  # probability of a mosaic sample
mixup: bool = True  # MixUp on top of Mosaic
mixup_prob: float = 0.5  # probability of MixUp for a mosaic sample
special_aug_ratio: float = 0.7  # Mosaic/MixUp only during this first fraction of the epochs
label_smoothing: float = 0.0  # class targets become 1 - eps/2 and eps/2
init_epoch: int = 0  # first epoch (to continue from model_path without --resume)
freeze_epoch: int = 50  # epochs with the backbone frozen (when freeze_train)
freeze_batch_size: int = 8  # batch size while frozen
unfreeze_epoch: int = 300  # total number of epochs
unfreeze_batch_size: int = 4  # batch size once unfrozen
freeze_train: bool = True  # freeze the backbone first (useful with pretrained weights only)
init_lr: float = 1e-2  # peak learning rate for a batch of 64
min_lr: float = 1e-4  # final learning rate for a batch of 64
optimizer_type: Literal["sgd", "adam", "adamw"] = "sgd"  # sgd is Nesterov SGD
momentum: float = 0.937  # SGD momentum / Adam beta1
weight_decay: float = 5e-4  # on conv weights only (not BatchNorm, not biases)
lr_decay_type: Literal["cos", "step"] = "cos"  # learning-rate schedule after warmup
warmup_epochs: float = 3.0  # linear warmup from 0.1 x lr, in epochs
focal_loss: bool = False  # reweight the confidence BCE by alpha_t * (1 - p_t)^gamma
focal_alpha: float = 0.25  # focal alpha on positives (1 - alpha on negatives)
focal_gamma: float = 2.0  # focal gamma
focal_loss_ratio: float = 10.0  # extra weight on the focal confidence term with "mean" normalisation (reference: 10)
focal_conf_scale: float | Literal["match_bce_at_init"] = 1.0  # factor on the focal conf term; or equal to BCE's at init
focal_cls: bool = False  # also reweight the class BCE by alpha_t * (1 - p_t)^gamma (focal_alpha, focal_gamma)
quality_loss: Literal["none", "qfl", "vfl"] = "none"  # confidence loss against the positives' IoU (not with focal_loss)
qfl_beta: float = 2.0  # Quality Focal Loss: BCE(z, IoU) * |IoU - p|^beta
vfl_alpha: float = 0.75  # Varifocal Loss: BCE(z, IoU) * IoU on positives, * alpha * p^gamma on negatives
vfl_gamma: float = 2.0  # Varifocal Loss gamma
conf_target: Literal["one", "iou"] = "one"  # positives' objectness target: 1, or YOLOv5's (1 - gr) + gr * IoU
iou_target_ratio: float = 1.0  # gr of conf_target="iou" (YOLOv5: 1.0)
conf_normalization: Literal["mean", "num_pos"] = "mean"  # mean over kept cells (reference) or / positives (paper)
iou_type: Literal["ciou", "diou", "giou"] = "ciou"  # location loss: 1 - this IoU
box_ratio: float = 0.05  # weight of loss_loc
cls_ratio: float | None = None  # weight of loss_cls; None: num_classes / 80 (the reference recipe)
obj_ratio: float | None = None  # weight of loss_conf before level balance; None: 5 * (h * w) / 416^2
ignore_threshold: float = 0.5  # negatives whose prediction overlaps a ground truth above this are ignored
multi_anchor_threshold: float | None = None  # also assign anchors with shape IoU above this (YOLOv4 uses 0.213)
scale_x_y: list[float] | None = None  # grid-sensitivity scale per level, coarsest first (darknet: [1.05, 1.1, 1.2])
obj_prior: float | None = None  # init objectness bias to -log((1 - p) / p) (Focal Loss paper: 0.01)
ema: bool = True  # keep a moving average of the weights for validation, mAP and the saved inference weights
ema_decay: float = 0.999  # EMA decay once warmed up: averages ~1 / (1 - decay) steps (0.9999 suits 100k+ step runs)
ema_tau: float = 200.0  # EMA warm-up in optimizer steps: decay at step t is ema_decay * (1 - exp(-t / ema_tau))
save_period: int = 10  # keep a checkpoint every this many epochs
save_dir: str = "logs"  # checkpoints, history, curves, config.json; one run at a time (run.lock while it trains)
val_period: int = 1  # epochs between validation losses (and always after the last): they pick "best" without eval_flag
eval_flag: bool = True  # compute val mAP@0.5 during training (same code and settings as get_map.py)
eval_period: int = 10  # epochs between mAP evaluations (and always after the last epoch)
eval_backend: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto"  # the mAP's engine, as get_map.py's backend
num_workers: int = 2  # DataLoader worker processes
train_annotation_path: str = "2007_train.txt"  # from voc_annotation.py (unused with dataset)
val_annotation_path: str = "2007_val.txt"  # from voc_annotation.py (unused with dataset)
dataset: str = ""  # a VOC devkit, YOLO-txt or COCO-json dataset: train on its "train" split, validate on its "val"
dataset_format: Literal["auto", "voc", "yolo", "coco"] = "auto"  # the dataset's format; auto: detected from its files
on_corrupt: Literal["error", "skip"] = "error"  # unreadable image: error names the file and stops, skip warns
resume: str = ""  # a checkpoint of this script: continue where it stopped, in its folder (unless --save_dir is given)

TrainConfig = settings_dataclass(globals(), name="TrainConfig")  # the settings above as one typed, frozen object


def main(argv: list[str] | None = None):
    """Trains with the settings above (overridden by argv); returns the finished run."""
    from utils.train.trainer import fit, resolve_training_config

    return fit(resolve_training_config(TrainConfig, argv))


if __name__ == "__main__":
    run_cli(main)
