"""python -m tierkit.runtime select|predict: choose and run an export's variant for this (or a described) device."""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tierkit.runtime.device import DeviceInfo, detect_device
from tierkit.runtime.manifest import load_manifest
from tierkit.runtime.select import Selection, select_variant
from tierkit.runtime.session import open_session, predict


def _device(path: str | None) -> DeviceInfo:
    if path is None:
        return detect_device()
    try:
        data = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the device description ({exc.strerror}). Fix: check --device") from None
    except ValueError as exc:
        raise ValueError(f"{path}: device description is not valid JSON ({exc}). Fix: repair the JSON") from None
    return DeviceInfo.from_dict(data, where=path)


def _select(args: argparse.Namespace) -> tuple[Selection, DeviceInfo]:
    manifest = load_manifest(args.manifest)
    device = _device(args.device)
    return select_variant(manifest, device, args.max_latency_ms, args.max_memory_mib), device


def _run_select(args: argparse.Namespace) -> dict:
    selection, device = _select(args)
    variant = selection.variant
    return {
        "variant": variant["name"],
        "tier": variant["tier"],
        "precision": variant["precision"],
        "file": variant["file"],
        "setting": selection.setting,
        "reason": selection.reason,
        "device": device.to_dict(),
    }


def _run_predict(args: argparse.Namespace) -> dict:
    selection, _ = _select(args)
    try:
        batch = np.load(args.input, allow_pickle=False)
    except OSError as exc:
        raise ValueError(
            f"{args.input}: cannot read the input ({exc}). Fix: pass a .npy file saved with np.save"
        ) from None
    except (ValueError, EOFError) as exc:  # EOFError: an empty or truncated file
        raise ValueError(f"{args.input}: not a plain .npy array ({exc}). Fix: save the batch with np.save") from None
    logits = predict(open_session(args.manifest, selection), batch)
    result = {"variant": selection.variant["name"], "predictions": logits.argmax(axis=-1).tolist()}
    if args.probabilities:
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        result["probabilities"] = (shifted / shifted.sum(axis=-1, keepdims=True)).tolist()
    return result


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--manifest", required=True, help="manifest.json written by tierkit-export")
    common.add_argument("--device", help="JSON file describing the device; default: detect this machine")
    common.add_argument("--max-latency-ms", type=float, help="the app's p50 latency limit")
    common.add_argument("--max-memory-mib", type=float, help="the app's peak memory limit")
    parser = argparse.ArgumentParser(prog="python -m tierkit.runtime", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("select", parents=[common], help="print the variant this device should run").set_defaults(
        run=_run_select
    )
    run = commands.add_parser("predict", parents=[common], help="run the selected variant on a .npy batch")
    run.add_argument("--input", required=True, help=".npy batch shaped (N, *input.shape)")
    run.add_argument("--probabilities", action="store_true", help="also print softmax probabilities")
    run.set_defaults(run=_run_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = args.run(args)
    except ValueError as exc:  # ManifestError, NoVariantFits and bad inputs: user-fixable, no traceback
        print("error: " + " ".join(str(exc).splitlines()), file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
