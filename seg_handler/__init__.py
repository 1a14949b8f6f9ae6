"""TorchServe handler, settings and launcher for the DeepLabv3 segmentation model."""
