"""The base of every error sftlab raises on purpose. Its message already says where (file, row, field, flag),
what is wrong and what to do, so the command line prints it alone, without a traceback; anything else that
escapes is a bug and keeps its traceback.

Each subclass also keeps the built-in base it always had (ValueError for bad input, RuntimeError for a
failed step), so `except ValueError` around a call goes on working."""


class SftlabError(Exception):
    """An error whose message is meant for the user: where, what, and how to fix it."""
