"""A reward model that scores every image 0 without looking at it: what remains of a call is
the cost of the `http` kind itself (encoding, HTTP, MLServer's decoding and reply). For
benches/server_overhead.rs."""

from mlserver import MLModel
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput


class Zero(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        n = request.inputs[0].shape[0]
        return InferenceResponse(
            model_name=self.name,
            outputs=[ResponseOutput(name="score", shape=[n], datatype="FP32", data=[0.0] * n)],
        )
