"""Train a tier: `python train.py tier=lowend` (see README.md and conf/train.yaml)."""

from tierkit.cli.train import main

if __name__ == "__main__":
    main()
