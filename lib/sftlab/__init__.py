"""sftlab: full fine-tuning of chat LLMs and judging the result, one params file per experiment."""

__version__ = "0.1.0"
