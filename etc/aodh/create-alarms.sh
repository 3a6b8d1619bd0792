#!/usr/bin/env bash
# Example Aodh alarms on the ceilometer-cmt meters, with the aodh CLI (aodhclient).
#
#   INSTANCE_ID=<nova uuid> PROJECT_ID=<project id> WEBHOOK_URL=<http receiver> \
#       etc/aodh/create-alarms.sh [instance] [project] [bandwidth] [prometheus] [guard]
#
# With no argument it creates all five. Authentication is the aodh CLI's usual
# one (OS_* variables, or `openstack alarm create` with the same options).
# The JSON files beside this script are the same alarms as REST bodies
# (POST /v2/alarms); fill them with envsubst:
#   envsubst < etc/aodh/instance-cache-occupancy.json | curl -X POST "$AODH_URL/v2/alarms" \
#       -H "X-Auth-Token: $OS_TOKEN" -H 'Content-Type: application/json' -d @-
#
# Gnocchi keeps cache.occupancy.percent in 5-minute points (archive policy
# ceilometer-cmt-low, from `ceilometer-cmt gnocchi-resources`): use
# granularity 300. Aodh compares one metric with a number, hence the percent
# meter: percent of the busiest L3 domain the instance uses.
set -euo pipefail

: "${WEBHOOK_URL:?set WEBHOOK_URL to the URL the alarm actions should POST to}"
aodh=${AODH_CLI:-aodh}
wanted=("$@")
((${#wanted[@]})) || wanted=(instance project bandwidth prometheus guard)

for alarm in "${wanted[@]}"; do
    case $alarm in
    instance)
        # One instance above 30% of an L3 cache domain (5-minute mean).
        : "${INSTANCE_ID:?set INSTANCE_ID}"
        "$aodh" alarm create --name "cache-occupancy-$INSTANCE_ID" \
            --type gnocchi_resources_threshold \
            --metric cache.occupancy.percent --resource-type instance \
            --resource-id "$INSTANCE_ID" --aggregation-method mean --granularity 300 \
            --evaluation-periods 1 --comparison-operator gt --threshold 30 \
            --severity moderate --alarm-action "$WEBHOOK_URL" --ok-action "$WEBHOOK_URL"
        ;;
    project)
        # Any running instance of a project peaking above 30% (max across
        # instances of each one's 5-minute max: ceilometer-cmt-low keeps max).
        : "${PROJECT_ID:?set PROJECT_ID}"
        "$aodh" alarm create --name "cache-occupancy-project-$PROJECT_ID" \
            --type gnocchi_aggregation_by_resources_threshold \
            --metric cache.occupancy.percent --resource-type instance \
            --query "{\"and\": [{\"=\": {\"project_id\": \"$PROJECT_ID\"}}, {\"=\": {\"ended_at\": null}}]}" \
            --aggregation-method max --granularity 300 --evaluation-periods 1 \
            --comparison-operator gt --threshold 30 \
            --severity moderate --alarm-action "$WEBHOOK_URL" --ok-action "$WEBHOOK_URL"
        ;;
    bandwidth)
        # Memory bandwidth from the cumulative byte counter: rate:mean is the
        # mean increase between two samples, i.e. bytes per polling interval.
        # 5 GB/s with the 60 s interval of etc/polling.yaml: 5e9 * 60.
        : "${INSTANCE_ID:?set INSTANCE_ID}"
        "$aodh" alarm create --name "memory-bandwidth-$INSTANCE_ID" \
            --type gnocchi_resources_threshold \
            --metric memory.bandwidth.total.bytes --resource-type instance \
            --resource-id "$INSTANCE_ID" --aggregation-method rate:mean --granularity 300 \
            --evaluation-periods 1 --comparison-operator gt --threshold 300000000000 \
            --severity low --alarm-action "$WEBHOOK_URL" --ok-action "$WEBHOOK_URL"
        ;;
    prometheus)
        # The Prometheus path: the polling agent exports
        # ceilometer_cache_occupancy_percent ([polling] enable_prometheus_exporter),
        # Prometheus scrapes it, Aodh's prometheus evaluator queries Prometheus.
        "$aodh" alarm create --name cache-occupancy-any-instance-prometheus \
            --type prometheus --query 'max(ceilometer_cache_occupancy_percent)' \
            --comparison-operator gt --threshold 30 \
            --severity moderate --alarm-action "$WEBHOOK_URL" --ok-action "$WEBHOOK_URL"
        ;;
    guard)
        # The guard capped the instance: an event alarm on ceilometer's event
        # of the guard's cmt.guard.cap notification. Needs the definitions of
        # etc/ceilometer/cmt_event_definitions.yaml in ceilometer's event
        # definitions, and ceilometer's events sent to Aodh's listener
        # (event pipeline publisher notifier://?topic=alarm.all). Aodh matches
        # an event alarm only to events of its own project: create it in the
        # instance's project (as admin: --project-id).
        : "${INSTANCE_ID:?set INSTANCE_ID}"
        "$aodh" alarm create --name "guard-cap-$INSTANCE_ID" --type event \
            --event-type cmt.guard.cap --query "traits.instance_id=string::$INSTANCE_ID" \
            --severity low --alarm-action "$WEBHOOK_URL"
        ;;
    *)
        echo "create-alarms.sh: unknown alarm '$alarm' (instance, project, bandwidth, prometheus, guard)" >&2
        exit 2
        ;;
    esac
done
