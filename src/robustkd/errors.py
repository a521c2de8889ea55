"""The project's own error types: each message names the parameter or file and the fix."""


class ProjectError(Exception):
    """Base class: anything the user can fix (params, data, checkpoints, resources)."""


class ParamsError(ProjectError):
    """params.yaml has an unknown key, a wrong type, an out-of-range value or an impossible combination."""


class DataError(ProjectError):
    """Raw or prepared data is missing, corrupted or in the wrong format."""


class CheckpointError(ProjectError):
    """A checkpoint is missing, corrupted, unsafe to load or does not match its architecture."""


class ResourceError(ProjectError):
    """Not enough disk or memory for the requested work."""
