"""Object detection with SkipblockNet (paper section 5.4, Table 6): PASCAL VOC data, VOC mAP,
a Fashion-MNIST stand-in for VOC in its layout, and the ``biasloss detect`` command. The detector
itself is :func:`biasloss.models.detection.ssd_skipblocknet`."""

from .metrics import average_precision, voc_map
from .scenes import SCENE_CLASSES, make_scenes
from .voc import VOC_CLASSES, VOCBoxes, collate

__all__ = ["SCENE_CLASSES", "VOC_CLASSES", "VOCBoxes", "average_precision", "collate", "make_scenes", "voc_map"]
