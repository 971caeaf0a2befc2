"""The SDK's exceptions. Each also inherits the builtin it refines, so callers may catch either."""


class MobileVLMError(Exception):
    """Base class: the CLI catches this, prints one line and exits 1."""


class ConfigError(MobileVLMError, ValueError):
    """A config or argument is invalid."""


class CheckpointError(MobileVLMError, ValueError):
    """A checkpoint is missing, corrupt, unsafe, or does not match the model."""


class InputError(MobileVLMError, ValueError):
    """A user input (image, prompt, text) cannot be used."""


class ContextLengthError(InputError):
    """The prompt does not fit in the model's context window."""
