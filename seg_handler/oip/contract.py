"""What the board and the OIP model server say to each other over ``inference.GRPCInferenceService``.

Standard library only: both the board (clients/oip.py) and the model server (seg_handler/oip/model.py) import
it, each in its own virtual environment.

ModelInfer, segment: one input ``image`` (BYTES, shape [1]: the encoded photo as uploaded). The answer:

    mask            BYTES [1]   palette PNG at the image's displayed size, pixel value = class index
    class_index     INT32 [k]   the classes present, pixels descending (as class_stats orders them)
    class_name      BYTES [k]   their names (UTF-8)
    class_pixels    INT64 [k]
    class_fraction  FP64  [k]
    parameters      model (JSON string: the model identity), width, height (int64)

ModelInfer, describe: no input and the request parameter ``describe`` = true; the answer has no output, and
its ``model`` parameter is the identity with ``class_names``, as TorchServe's describe answers it.

A rejected image fails the call with the status TorchServe's gRPC gives it and the details
``"<code>: <message>"``: INVALID_ARGUMENT (400), RESOURCE_EXHAUSTED (413), FAILED_PRECONDITION (415); a failed
forward or mask is INTERNAL (500).
"""

from __future__ import annotations

PLATFORM = "pytorch_torchexport"
IMAGE = "image"
MASK = "mask"
CLASS_INDEX = "class_index"
CLASS_NAME = "class_name"
CLASS_PIXELS = "class_pixels"
CLASS_FRACTION = "class_fraction"
OUTPUTS = ((MASK, "BYTES"), (CLASS_INDEX, "INT32"), (CLASS_NAME, "BYTES"), (CLASS_PIXELS, "INT64"),
           (CLASS_FRACTION, "FP64"))  # fmt: skip
MODEL_PARAMETER = "model"
WIDTH_PARAMETER = "width"
HEIGHT_PARAMETER = "height"
DESCRIBE_PARAMETER = "describe"
# A rejection's HTTP-style status and the gRPC status code name it travels as.
REJECTION_CODES = {400: "INVALID_ARGUMENT", 413: "RESOURCE_EXHAUSTED", 415: "FAILED_PRECONDITION"}
