"""One root for everything workerguard raises, so callers can catch "anything from us"."""


class WorkerguardError(Exception):
    """Base class of every workerguard error."""


class ConfigError(WorkerguardError):
    """The configuration file or an environment variable is invalid."""


class UnknownProfile(WorkerguardError):
    """A request named a profile that is not configured."""


class InvalidRequest(WorkerguardError):
    """A request's arguments have the wrong type, value or name."""


class BlindLocal(WorkerguardError):
    """A ``--local`` call runs as another uid, or with another runtime dir, than the guard
    that runs the host's instances: it would see none of them; refused, nothing touched."""


class LockTimeout(WorkerguardError):
    """The profile's lock could not be taken within the wait limit."""


class LockLost(WorkerguardError):
    """The profile's lock expired or was taken over while we acted; we stopped acting."""


class ActionFailed(WorkerguardError):
    """The action ran but did not reach its goal (for example a worker died at start)."""


class RedisUnavailable(WorkerguardError):
    """Redis could not be reached; nothing was touched."""


class EmbeddedRedisError(WorkerguardError):
    """The embedded redis-server could not be started."""


class HostError(WorkerguardError):
    """The host refused something workerguard needs (a directory, a file, disk space)."""


class FenceTimeout(LockTimeout):
    """The host fence was still held by another process when the request's deadline passed."""
