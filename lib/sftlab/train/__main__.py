"""`python -m sftlab.train --config train_config.yaml`: the training script (sftlab.train.trainer)."""

from sftlab.train.trainer import main, parse_args

if __name__ == "__main__":
    main(*parse_args())
