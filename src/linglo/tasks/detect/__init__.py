"""Object detection / instance segmentation task: COCO data (data), torchvision detectors on a timm backbone
(models), COCO AP (metrics), the Task (task)."""
