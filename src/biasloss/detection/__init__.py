"""Object detection with SkipblockNet (paper section 5.4, Table 6): PASCAL VOC data, VOC mAP,
and the ``biasloss detect`` command. The detector itself is
:func:`biasloss.models.detection.ssd_skipblocknet`."""

from .metrics import average_precision, voc_map
from .voc import VOC_CLASSES, VOCBoxes, collate

__all__ = ["VOC_CLASSES", "VOCBoxes", "average_precision", "collate", "voc_map"]
