"""Call the example ``mlp`` model with a plain tritonclient gRPC client (nothing of the control plane).

python examples/infer_mlp.py --url 127.0.0.1:8001
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.grpc as grpcclient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC endpoint (the proxy)")
    parser.add_argument("--model", default="mlp")
    args = parser.parse_args()

    data = np.linspace(-1.0, 1.0, 16, dtype=np.float32).reshape(1, 16)
    client = grpcclient.InferenceServerClient(args.url)
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer(args.model, [tensor])
    response = result.get_response()
    print(
        f"{response.model_name} version {response.model_version}: OUTPUT0 = {result.as_numpy('OUTPUT0')[0]}"
    )


if __name__ == "__main__":
    main()
