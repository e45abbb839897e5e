"""Errors meant for the person at the keyboard.

Raise :class:`UserError` (or a subclass) when the input is wrong: the message says which
file or setting, what is wrong and what to do. The CLI prints it without a traceback.
"""


class UserError(Exception):
    """Bad input from the user: a message that names the file/setting and the fix."""


class ConfigError(UserError, ValueError):
    """A config file, override or config field is wrong; the message says which key and why.

    Every config class (``PolicyConfig``, ``TrainConfig``, ``CrafterEnvConfig`` ...) raises it
    from its checks, so callers catch one type.
    """
