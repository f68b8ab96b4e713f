"""The benchmark models: a small and a medium fully connected network as standard Triton folders.

``small`` is 256 -> 512 -> 512 -> 10 and ``medium`` 1024 -> 2048 x 3 -> 10
(ReLU between layers), FP32 ONNX with a dynamic batch axis, ``INPUT0`` to
``OUTPUT0``, built from seeded weights with the example models' own helpers
so that the folder loads in any Triton with an ONNX Runtime backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import examples_module
from onnx import helper


@dataclass(frozen=True)
class MlpShape:
    """A benchmark network: its name and layer widths, input first, output last."""

    name: str
    widths: tuple[int, ...]

    @property
    def input_width(self) -> int:
        """Elements per request row of ``INPUT0``."""
        return self.widths[0]

    @property
    def output_width(self) -> int:
        """Elements per request row of ``OUTPUT0``."""
        return self.widths[-1]


SMALL = MlpShape("small", (256, 512, 512, 10))
MEDIUM = MlpShape("medium", (1024, 2048, 2048, 2048, 10))
SHAPES = {shape.name: shape for shape in (SMALL, MEDIUM)}


def build_mlp_folder(out_dir: Path, shape: MlpShape, *, seed: int = 7) -> Path:
    """Write ``out_dir/<name>/{config.pbtxt, 1/model.onnx}`` for ``shape``; return the model folder."""
    examples = examples_module()
    rng = np.random.default_rng(seed)
    initializers = []
    nodes = []
    current = "INPUT0"
    layers = list(zip(shape.widths[:-1], shape.widths[1:], strict=True))
    for index, (width_in, width_out) in enumerate(layers):
        initializers += [
            examples._weights(rng, f"W{index}", [width_in, width_out]),
            examples._weights(rng, f"B{index}", [width_out]),
        ]
        last = index == len(layers) - 1
        nodes += [
            helper.make_node("MatMul", [current, f"W{index}"], [f"mm{index}"]),
            helper.make_node("Add", [f"mm{index}", f"B{index}"], ["OUTPUT0" if last else f"pre{index}"]),
        ]
        if not last:
            nodes.append(helper.make_node("Relu", [f"pre{index}"], [f"h{index}"]))
            current = f"h{index}"
    graph = helper.make_graph(
        nodes,
        shape.name,
        [examples._tensor_io("INPUT0", [shape.input_width])],
        [examples._tensor_io("OUTPUT0", [shape.output_width])],
        initializers,
    )
    widths = "-".join(str(w) for w in shape.widths)
    model = examples._model_bytes(graph, f"benchmark mlp {widths} seed={seed}")
    config = examples._config(
        shape.name, [("INPUT0", [shape.input_width])], [("OUTPUT0", [shape.output_width])]
    )
    return examples._write_model(out_dir, shape.name, 1, config, model)
