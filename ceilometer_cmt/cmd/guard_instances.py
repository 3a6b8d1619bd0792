"""The guard's instances, from ceilometer's own ``local_instances`` discovery.

The guard lists what the polling agent polls: ceilometer's
``InstanceDiscovery`` (``ceilometer.compute.discovery``), run with the
guard's config, which holds the same ``[DEFAULT] libvirt_uri``, ``host``,
``[compute]`` and ``[service_credentials]`` as the agent's. Each instance
the agent would read (:func:`runtime.instance_ref`: a state with a qemu
process) becomes a :class:`GuardInstance`: its uuid, its libvirt domain name
(``OS-EXT-SRV-ATTR:instance_name``), and whether it says ``cmt:guard=off``
in its server metadata or its flavor's extra specs
(:func:`instance_settings.guard_off`, the reader of ``cmt:mbm_priority``
too). What a resource carries is ceilometer's choice: the server metadata
only with ``[compute] fetch_extra_metadata = true`` (from the Nova API,
cached for the life of the process), the extra specs only where Nova writes
them into libvirt's metadata (2025.2 on).

When the discovery fails (libvirt down, after ceilometer's own retries on a
lost connection; a Nova API error) the listing raises
:class:`DiscoveryFailed`: the guard's cycle fails with a warning and changes
nothing. An empty list instead would read as "every instance left" and
release every cap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ceilometer_cmt.errors import CmtError
from ceilometer_cmt.guard.observe import GuardInstance
from ceilometer_cmt.pollsters import instance_settings, runtime


class DiscoveryFailed(CmtError):
    """ceilometer's instance discovery raised; the message says why."""


def register_opts(conf: Any) -> None:
    """Before the config files are read: the options ceilometer's discovery
    reads, registered as ceilometer registers them (``ceilometer.opts``
    and the ``[service_credentials]`` keystoneauth options), among them
    ``[DEFAULT] host``, ``libvirt_type`` and ``libvirt_uri``."""
    from ceilometer import keystone_client
    from ceilometer import opts as ceilometer_opts

    for group, group_opts in ceilometer_opts.list_opts():
        conf.register_opts(list(group_opts), group=None if group == "DEFAULT" else group)
    keystone_client.register_keystoneauth_opts(conf)


def lister(conf: Any) -> Callable[[], list[GuardInstance]]:
    """After the config files are read: a callable listing the running
    instances, one ``InstanceDiscovery`` kept between calls (its libvirt
    connection and its Nova lookups are cached there, as in the agent)."""
    from ceilometer import keystone_client
    from ceilometer.compute import discovery

    keystone_client.post_register_keystoneauth_opts(conf)
    found = discovery.InstanceDiscovery(conf)

    def listed() -> list[GuardInstance]:
        try:
            resources = list(found.discover(manager=None))
        except Exception as e:  # noqa: BLE001 - whatever ceilometer raised: no listing
            raise DiscoveryFailed(f"cannot list the instances (ceilometer's "
                                  f"{found.method} discovery): {e!r}") from e
        out = []
        for r in resources:
            ref = runtime.instance_ref(r)
            if ref is not None:
                out.append(GuardInstance(ref.uuid, ref.domain_name,
                                         instance_settings.guard_off(r), _project(r)))
        return out

    return listed


def _project(resource: Any) -> str | None:
    """The owning project of a discovered instance (``tenant_id``, as
    ceilometer's discovery names it), None when it has none."""
    value = getattr(resource, "tenant_id", None)
    return str(value) if value else None
