"""Small QDQ layers that ONNX Runtime runs on its u8×s8 kernels, with weights and inputs that make pairs saturate.

`python tests/int8_cases.py OUT.npz` runs every case in ONNX Runtime and saves inputs, weights and outputs. Run
under an emulated CPU without VNNI, it records what such a CPU computes; tests/data/non_vnni_kernels.npz was
made that way (see tests/test_kernel_emulation.py).
"""

import sys

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

# A scale no integer sum lands exactly half-way on, so requantizing never depends on how a tie is broken.
OUTPUT_SCALE = 1999.7
OUTPUT_ZERO = 128
CONV_CASES = {
    # name: (input channels, output channels, kernel, group, pad, stride, input zero point)
    "conv_c1_k3": (1, 8, 3, 1, 0, 1, 0),
    "conv_c1_k5_pad": (1, 8, 5, 1, 1, 1, 0),
    "conv_c3_k3": (3, 8, 3, 1, 1, 1, 0),
    "conv_c5_k3": (5, 8, 3, 1, 0, 1, 0),
    "conv_c8_k3_zero_point": (8, 8, 3, 1, 1, 1, 37),
    "conv_c16_k1": (16, 8, 1, 1, 0, 1, 0),
    "conv_c32_k3_stride2": (32, 8, 3, 1, 1, 2, 0),
    "grouped_c8_g2": (8, 8, 3, 2, 1, 1, 0),
    "depthwise_c8": (8, 8, 3, 8, 1, 1, 0),
    "depthwise_c4_multiplier2": (4, 8, 3, 4, 1, 1, 0),
}
GEMM_CASES = {"gemm_k64": 64, "matmul_k33": 33}


def _qdq_input(zero_point: int) -> tuple[list, list]:
    initializers = [
        numpy_helper.from_array(np.array(1.0, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(zero_point, np.uint8), "x_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
    ]
    return initializers, nodes


def _model(nodes: list, initializers: list, x_shape: tuple) -> bytes:
    graph = helper.make_graph(
        nodes,
        "case",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    # IR 10, as tierkit's exported files carry: onnx's newest IR is more than older runtimes read.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    return model.SerializeToString()


def conv_case(name: str, rng: np.random.Generator) -> tuple[bytes, np.ndarray, np.ndarray]:
    channels, outputs, kernel, group, pad, stride, zero_point = CONV_CASES[name]
    weight = rng.integers(-128, 128, (outputs, channels // group, kernel, kernel)).astype(np.int8)
    x = rng.integers(100, 256, (2, channels, 7, 7)).astype(np.float32)
    initializers, nodes = _qdq_input(zero_point)
    initializers += [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, outputs).astype(np.float32), "w_scale"),
        numpy_helper.from_array(rng.normal(0, 500, outputs).astype(np.float32), "bias"),
        numpy_helper.from_array(np.array(OUTPUT_SCALE, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(OUTPUT_ZERO, np.uint8), "y_zero"),
    ]
    nodes += [
        helper.make_node("DequantizeLinear", ["w", "w_scale"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd", "bias"], ["c"], group=group, pads=[pad] * 4, strides=[stride] * 2),
        helper.make_node("QuantizeLinear", ["c", "y_scale", "y_zero"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "y_scale", "y_zero"], ["y"]),
    ]
    return _model(nodes, initializers, x.shape), x, weight


def gemm_case(name: str, rng: np.random.Generator) -> tuple[bytes, np.ndarray, np.ndarray]:
    depth = GEMM_CASES[name]
    x = rng.integers(100, 256, (5, depth)).astype(np.float32)
    initializers, nodes = _qdq_input(0)
    if name.startswith("gemm"):
        weight = rng.integers(-128, 128, (6, depth)).astype(np.int8)
        initializers += [
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.array(0.5, np.float32), "w_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "w_zero"),
            numpy_helper.from_array(rng.normal(0, 500, 6).astype(np.float32), "bias"),
            numpy_helper.from_array(np.array(OUTPUT_SCALE / 4, np.float32), "y_scale"),
            numpy_helper.from_array(np.array(OUTPUT_ZERO, np.uint8), "y_zero"),
        ]
        # QGemm needs the weight's zero point and the quantized output; MatMul becomes MatMulIntegerToFloat.
        nodes += [
            helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["wd"]),
            helper.make_node("Gemm", ["xd", "wd", "bias"], ["g"], transB=1),
            helper.make_node("QuantizeLinear", ["g", "y_scale", "y_zero"], ["gq"]),
            helper.make_node("DequantizeLinear", ["gq", "y_scale", "y_zero"], ["y"]),
        ]
    else:
        weight = rng.integers(-128, 128, (depth, 6)).astype(np.int8)
        initializers += [
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.array(0.5, np.float32), "w_scale"),
        ]
        nodes += [
            helper.make_node("DequantizeLinear", ["w", "w_scale"], ["wd"]),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        ]
    return _model(nodes, initializers, x.shape), x, weight


def all_cases(seed: int = 0) -> dict[str, tuple[bytes, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    cases = {name: conv_case(name, rng) for name in CONV_CASES}
    cases.update({name: gemm_case(name, rng) for name in GEMM_CASES})
    return cases


def run_in_onnxruntime(model: bytes, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


if __name__ == "__main__":
    recorded = {}
    for name, (model, x, weight) in all_cases().items():
        recorded[f"{name}/x"], recorded[f"{name}/w"] = x, weight
        recorded[f"{name}/y"] = run_in_onnxruntime(model, x)
    recorded["onnxruntime_version"] = np.array(ort.__version__)
    np.savez_compressed(sys.argv[1], **recorded)
