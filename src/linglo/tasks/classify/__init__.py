"""Image classification task: ImageFolder data (data), decoded-image cache and batch augmentation (decoded),
the Task (task), human-readable reports (report), timm augmentation guard (posterize_guard)."""
