"""Semantic segmentation task: image + label-PNG folders (data), Semantic FPN / UPerNet heads (heads), mIoU
(metrics), the Task (task)."""
