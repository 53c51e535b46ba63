"""The detector, where users of the PyTorch YOLOv4 repositories look for it (``from yolo import YOLO``).

It lives in utils/infer/detector.py (ONNX export and ``OnnxYOLO`` in utils/infer/onnx_detector.py, the NMS settings
in utils/infer/postprocess.py) so that training and the comparison tool, under utils/, use it without importing a
top-level script.

    detector = YOLO(model_path="logs/best_epoch_weights.pth")   # settings come from the checkpoint's config
    dets = detector.detect(Image.open("img/street.jpg"))        # Detections: boxes_xyxy, scores, class_ids, ...
    strict = YOLO(model_path="logs/best_epoch_weights.pth", postprocess_settings=PostprocessSettings(confidence=0.7))
"""
from utils.infer.detector import YOLO  # noqa: F401
from utils.infer.onnx_detector import OnnxYOLO, onnx_mismatch  # noqa: F401
from utils.infer.pipeline import Detections  # noqa: F401
from utils.infer.postprocess import PostprocessSettings  # noqa: F401
