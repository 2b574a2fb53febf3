"""Example Python reward plugin (hrf:reward@0.1.0, world reward-plugin): image contrast.

Build: tools/plugins/build_python.sh plugins/python/examples/contrast/app.py out.wasm
Config: {"scale": float} multiplies the score (default 1.0).
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, types

from contrast import contrast


class Reward(exports.Reward):
    def __init__(self) -> None:
        self.scale = 1.0

    def info(self) -> types.PluginInfo:
        return types.PluginInfo(
            name="contrast-py", version="0.1.0", higher_is_better=True, batch_hint=None
        )

    def configure(self, config: str) -> None:
        try:
            self.scale = float(json.loads(config).get("scale", 1.0))
        except (ValueError, TypeError, AttributeError) as e:
            raise Err(types.RewardError_Config(f"scale: a number expected ({e})"))
        log.log(log.Level.DEBUG, f"contrast-py configured, scale {self.scale}")

    def score(self, samples: list[types.Sample]) -> list[types.SampleScore]:
        return [
            types.SampleScore(value=self.scale * contrast(s.image.data), extras=[])
            for s in samples
        ]
