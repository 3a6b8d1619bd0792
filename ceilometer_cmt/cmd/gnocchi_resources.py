"""``ceilometer-cmt gnocchi-resources``: ceilometer's Gnocchi resource map plus our meters.

Ceilometer's Gnocchi publisher drops every meter that its
``gnocchi_resources.yaml`` does not map to a resource type, and a custom
``resources_definition_file`` REPLACES the packaged default rather than
extending it. The only safe way to add meters is therefore to merge them into
the file the site already uses, which is what this module does:

* per-instance meters go on resource type ``instance`` (resource id = the
  instance uuid, attributes from the instance metadata ceilometer already
  maps);
* host meters go on resource type ``host`` (created by ``ceilometer-upgrade``,
  attribute ``host_name`` required), taken from ``resource_metadata``;
* cumulative byte counters get the ``ceilometer-low-rate`` archive policy so
  Gnocchi can answer ``rate:mean``;
* the per-instance gauges get ``ceilometer-cmt-low`` (added to the file's
  ``archive_policies``, which the publisher creates in Gnocchi): ceilometer-low's
  5-minute/30-day definition with ``max`` besides ``mean``, so that an Aodh
  ``gnocchi_aggregation_by_resources_threshold`` alarm with ``max`` can say
  "any instance of this project above 30%" (ceilometer-low has only ``mean``,
  and Aodh uses the same method to aggregate each metric and across them).

Merging is idempotent: a meter already mapped anywhere in the file is left
alone, an attribute already defined is left alone.
"""

from __future__ import annotations

import argparse
import copy
import importlib.resources
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from ceilometer_cmt import meters

OUR_ARCHIVE_POLICIES: tuple[Mapping[str, Any], ...] = (
    {
        "name": meters.PEAK_POLICY,
        "aggregation_methods": ["mean", "max"],
        "back_window": 0,
        "definition": [{"granularity": "5 minutes", "timespan": "30 days"}],
    },
)


@dataclass(frozen=True)
class ResourceMeters:
    """Meters of one Gnocchi resource type, and the attributes that resource needs."""

    resource_type: str
    # meter name -> extra settings ({} = the file's archive_policy_default)
    metrics: Mapping[str, Mapping[str, str]]
    # attribute name -> ceilometer jsonpath into the sample
    attributes: Mapping[str, str] = field(default_factory=dict)


#: Gnocchi resource type -> the attributes an entry of that type needs (used
#: only when the base file has no entry of that type at all).
RESOURCE_ATTRIBUTES: Mapping[str, Mapping[str, str]] = {
    # ceilometer's default ``instance`` entry already maps host, flavor_id,
    # display_name, ... from make_sample_from_instance's metadata.
    "instance": {
        "host": "resource_metadata.(instance_host|host)",
        "display_name": "resource_metadata.display_name",
        "flavor_id": "resource_metadata.(instance_flavor_id|(flavor.id)|flavor_id)",
        "flavor_name": "resource_metadata.(instance_type|(flavor.name)|flavor_name)",
    },
    "host": {"host_name": "resource_metadata.(host_name|host)"},
}


def resources_of(table: Sequence[meters.Meter] = meters.TABLE) -> tuple[ResourceMeters, ...]:
    """The meter table grouped by Gnocchi resource type (in the table's order)."""
    types = list(dict.fromkeys(m.resource_type for m in table))
    return tuple(
        ResourceMeters(
            resource_type=rt,
            metrics={m.name: ({"archive_policy_name": m.archive_policy}
                              if m.archive_policy else {})
                     for m in table if m.resource_type == rt},
            attributes=RESOURCE_ATTRIBUTES.get(rt, {}))
        for rt in types)


OUR_RESOURCES: tuple[ResourceMeters, ...] = resources_of()


def our_meter_names() -> list[str]:
    return [m for r in OUR_RESOURCES for m in r.metrics]


def default_definitions_path() -> str:
    """Path of the installed ceilometer's packaged ``gnocchi_resources.yaml``."""
    ref = importlib.resources.files("ceilometer").joinpath(
        "publisher", "data", "gnocchi_resources.yaml")
    return str(ref)


def _mapped_meters(resources: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """meter name -> resource type, for every meter the definitions map."""
    mapped: dict[str, str] = {}
    for entry in resources:
        metrics = entry.get("metrics") or {}
        for name in metrics:
            mapped.setdefault(str(name), str(entry.get("resource_type")))
    return mapped


def merge(definitions: Mapping[str, Any],
          ours: Sequence[ResourceMeters] = OUR_RESOURCES,
          policies: Sequence[Mapping[str, Any]] = OUR_ARCHIVE_POLICIES) -> dict[str, Any]:
    """Return a copy of ``definitions`` (a parsed gnocchi_resources.yaml) with ``ours`` added.

    The input is not modified. Meters already mapped (to any resource type) are
    kept as they are; missing meters are added to the first entry of their
    resource type, or to a new entry appended at the end. Archive policies are
    added when no policy of that name is defined.
    """
    if not isinstance(definitions, Mapping):
        raise ValueError("a gnocchi resources definition must be a mapping")
    result: dict[str, Any] = copy.deepcopy(dict(definitions))
    archive_policies = result.get("archive_policies")
    if archive_policies is None:
        archive_policies = result["archive_policies"] = []
    if not isinstance(archive_policies, list):
        raise ValueError("'archive_policies' must be a list")
    known = {p.get("name") for p in archive_policies if isinstance(p, Mapping)}
    for policy in policies:
        if policy["name"] not in known:
            archive_policies.append(copy.deepcopy(dict(policy)))
    resources = result.get("resources")
    if resources is None:
        resources = result["resources"] = []
    if not isinstance(resources, list):
        raise ValueError("'resources' must be a list")
    for entry in resources:
        if not isinstance(entry, dict) or "resource_type" not in entry:
            raise ValueError(f"resource entry without resource_type: {entry!r}")

    for wanted in ours:
        mapped = _mapped_meters(resources)
        missing = {m: dict(extra) for m, extra in wanted.metrics.items() if m not in mapped}
        entry = next((e for e in resources if e["resource_type"] == wanted.resource_type),
                     None)
        if entry is None:
            if not missing:
                continue
            entry = {"resource_type": wanted.resource_type, "metrics": {}}
            resources.append(entry)
        metrics = entry.get("metrics")
        if metrics is None:
            metrics = entry["metrics"] = {}
        elif isinstance(metrics, list):  # the old list form; ceilometer reads both
            metrics = entry["metrics"] = {name: None for name in metrics}
        for name, extra in missing.items():
            metrics[name] = extra or None
        if wanted.attributes and missing:
            attributes = entry.setdefault("attributes", {})
            for attr, path in wanted.attributes.items():
                attributes.setdefault(attr, path)
    return result


HEADER = ("# Gnocchi resource definitions for ceilometer's gnocchi publisher, with the\n"
          "# ceilometer-cmt meters merged in by `ceilometer-cmt gnocchi-resources`.\n")


class _Dumper(yaml.SafeDumper):
    """Looks like ceilometer's own file: indented lists, ``name:`` for an empty value."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def _represent_none(dumper: yaml.SafeDumper, _: None) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:null", "")


_Dumper.add_representer(type(None), _represent_none)


def dump(definitions: Mapping[str, Any]) -> str:
    text = yaml.dump(dict(definitions), Dumper=_Dumper, sort_keys=False,
                     default_flow_style=False, width=100)
    return HEADER + "---\n" + text


def load(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a gnocchi resources definition (no mapping)")
    return data


def merged_text(base_path: str | None = None) -> str:
    """The merged definitions as YAML text; ``base_path`` defaults to ceilometer's file."""
    return dump(merge(load(base_path or default_definitions_path())))


def misplaced(definitions: Mapping[str, Any],
              ours: Sequence[ResourceMeters] = OUR_RESOURCES) -> dict[str, str]:
    """Our meters that ``definitions`` maps to another resource type: meter -> that type."""
    mapped = _mapped_meters(definitions.get("resources") or [])
    return {m: mapped[m] for r in ours for m in r.metrics
            if m in mapped and mapped[m] != r.resource_type}


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".gnocchi_resources.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if os.path.exists(path):
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ceilometer-cmt gnocchi-resources",
        description="Print ceilometer's gnocchi_resources.yaml with the ceilometer-cmt "
                    "meters merged in. Point the gnocchi publisher at the result with "
                    "gnocchi://?resources_definition_file=FILE. Merging twice changes "
                    "nothing.")
    parser.add_argument("--base", metavar="FILE",
                        help="definitions to merge into (default: the installed "
                             "ceilometer's ceilometer/publisher/data/gnocchi_resources.yaml)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write here (atomically; may equal --base) instead of stdout")
    args = parser.parse_args(argv)
    try:
        base = load(args.base or default_definitions_path())
        text = dump(merge(base))
    except (OSError, ValueError, yaml.YAMLError) as e:
        print(f"ceilometer-cmt gnocchi-resources: {e}", file=sys.stderr)
        return 1
    for meter, resource_type in misplaced(base).items():
        print(f"ceilometer-cmt gnocchi-resources: warning: {meter} is already mapped to "
              f"resource type {resource_type!r}; left as it is", file=sys.stderr)
    if args.output:
        _write_atomically(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
