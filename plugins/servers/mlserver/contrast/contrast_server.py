"""A Python reward served by Seldon MLServer over the Open Inference Protocol (KServe v2): the
contrast of plugins/python/examples/contrast (the population standard deviation of an image's
bytes over 255), the same function the WASM and process examples package.

    mlserver start plugins/servers/mlserver/contrast

hrf sends the images as UINT8 [B, H, W, C] (`encoding: uint8`) or as base64 PNG files in a BYTES
[B] tensor (`encoding: png`), the prompts and the metadata as BYTES [B] text; this model answers
one FP32 `score` per image. Any other reward fits the same frame: replace `score_one`.
"""

import base64
import io
import pathlib
import sys

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / "python/examples/contrast"))
from contrast import contrast  # noqa: E402


def images_of(request: InferenceRequest) -> list:
    """Each image's bytes, interleaved row-major, whatever the encoding."""
    images = next(t for t in request.inputs if t.name == "images")
    if images.datatype == "UINT8":
        batch = NumpyCodec.decode_input(images)
        return [batch[i].tobytes() for i in range(batch.shape[0])]
    if images.datatype == "BYTES":
        from PIL import Image  # only the png encoding needs it

        out = []
        for item in images.data.root:
            png = base64.b64decode(item) if isinstance(item, str) else bytes(item)
            out.append(np.asarray(Image.open(io.BytesIO(png))).tobytes())
        return out
    raise ValueError(f"images: expected UINT8 or BYTES, got {images.datatype}")


class ContrastReward(MLModel):
    async def load(self) -> bool:
        return True

    def score_one(self, data: bytes) -> float:
        return contrast(data)

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        scores = [self.score_one(d) for d in images_of(request)]
        return InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="score", shape=[len(scores)], datatype="FP32", data=scores)],
        )
