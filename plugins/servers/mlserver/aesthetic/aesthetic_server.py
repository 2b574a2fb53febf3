"""The testbed's aesthetic reward served by Seldon MLServer: the reward classifier's features
(models/fmnist-classifier.onnx), L2-normalised, through the aesthetic head
(models/aesthetic-head.onnx), run by Python onnxruntime, the same models and preparation as the
built-in `aesthetic` reward (8-bit grey 32×32 images, (x/255 − 0.5)/0.5, NCHW). A model behind a
server the way a heavy reward is served: tests/servers.rs checks that its scores equal the
built-in ones.

    mlserver start plugins/servers/mlserver/aesthetic
"""

import pathlib

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

MODELS = pathlib.Path(__file__).resolve().parents[4] / "models"


class AestheticReward(MLModel):
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.encoder = ort.InferenceSession(str(MODELS / "fmnist-classifier.onnx"), opts)
        self.head = ort.InferenceSession(str(MODELS / "aesthetic-head.onnx"), opts)
        return True

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        images = next(t for t in request.inputs if t.name == "images")
        batch = NumpyCodec.decode_input(images)  # [B, H, W, C] uint8
        x = ((batch.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2)
        _, features = self.encoder.run(["probs", "features"], {"image": x})
        norm = np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        score = self.head.run(None, {"features": (features / norm).astype(np.float32)})[0][:, 0]
        return InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="score", shape=[len(score)], datatype="FP32", data=score.tolist())],
        )
