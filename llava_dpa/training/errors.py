"""The error every refusal of a training run raises."""


class RunConfigError(ValueError):
    """A setting, or a combination of settings, that cannot train what the user meant."""
