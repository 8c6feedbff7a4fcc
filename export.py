"""Export finished runs to ONNX: `python export.py [run=<folder>]` (see README.md and conf/export.yaml)."""

from tierkit.cli.export import main

if __name__ == "__main__":
    main()
