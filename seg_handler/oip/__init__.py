"""The segmentation model on an Open Inference Protocol v2 server (KServe's Python model server).

Apart from what ships in the TorchServe archive: ``contract`` names the tensors and parameters both sides
use, ``model`` is the KServe model (the handler's pure functions over the ``.pt2`` ExportedProgram),
``server`` binds KServe's gRPC inference service on our address, and ``__main__`` is the command line. Only
``contract`` is imported outside the OIP server's own virtual environment (``.venv-oip``, made by make).
"""
