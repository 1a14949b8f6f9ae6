"""DeepLabv3 model pipeline: data, model, train, evaluate, export to TorchScript and a TorchServe archive."""
