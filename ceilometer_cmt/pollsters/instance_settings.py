"""Per-instance settings (``cmt:...`` keys) of a resource from ceilometer's
``local_instances`` discovery, read one way by the agent and the guard.

A discovered resource (ceilometer's ``InstanceDiscovery``) carries two
places a user or an operator can set a key:

- ``metadata``: the server metadata, a dict. Ceilometer fills it from the
  Nova API only with ``[compute] fetch_extra_metadata = true`` (with the
  default ``libvirt_metadata`` method), else it is ``{}``;
- ``flavor["extra_specs"]``: the flavor's extra specs, a dict, present
  where ceilometer found them in libvirt's Nova metadata (Nova 2025.2 on);
  absent otherwise (ceilometer asks no API for them).

Order: the server metadata first, then the flavor's extra specs. The
server metadata belongs to one instance, and its owner may set it at any
time (``openstack server set --property``); the flavor says what every
instance of that flavor gets, as the operator chose: the narrower choice
wins. A key present in the metadata wins even when its value is empty.
"""

from __future__ import annotations

from typing import Any

from ceilometer_cmt.backends.resctrl.assign import PRIORITY_KEY, priority_of

#: ``cmt:guard=off`` exempts an instance from ``ceilometer-cmt guard``.
GUARD_KEY = "cmt:guard"


def _value(where: object, key: str) -> str | None:
    if not isinstance(where, dict) or key not in where:
        return None
    value = where[key]
    return "" if value is None else str(value)  # an empty <extraSpec/> is set, to ""


def setting(resource: Any, key: str) -> str | None:
    """``key`` of a discovered instance: its server metadata's value, else
    its flavor's extra spec; None when neither has the key."""
    found = _value(getattr(resource, "metadata", None), key)
    if found is not None:
        return found
    flavor = getattr(resource, "flavor", None)
    return _value(flavor.get("extra_specs") if isinstance(flavor, dict) else None, key)


def mbm_priority(resource: Any) -> int:
    """``cmt:mbm_priority`` as an int; 0 when unset or not an int."""
    value = setting(resource, PRIORITY_KEY)
    return 0 if value is None else priority_of({PRIORITY_KEY: value})


def guard_off(resource: Any) -> bool:
    """``cmt:guard=off`` (any case, spaces around it ignored)."""
    value = setting(resource, GUARD_KEY)
    return value is not None and value.strip().lower() == "off"
