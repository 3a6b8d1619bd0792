"""The small exception hierarchy shared by every backend."""


class CmtError(Exception):
    """Base of every error this plugin raises on purpose."""


class BackendUnavailable(CmtError):
    """A backend cannot work on this host; the message says why."""


class InstanceGone(CmtError):
    """The instance's process vanished (or its pid was reused)."""


class NotMonitored(CmtError):
    """An instance could not get a monitor (no RMID, fd limit, ...)."""
