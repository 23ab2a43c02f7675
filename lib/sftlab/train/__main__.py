"""`python -m sftlab.train --config train_config.yaml`: the training script (sftlab.train.trainer)."""

from sftlab import lifeline

if __name__ == "__main__":
    lifeline.die_with_launcher()  # under torchrun: end with the agent and with the process that launched it

    from sftlab.train.trainer import main, parse_args

    main(*parse_args())
