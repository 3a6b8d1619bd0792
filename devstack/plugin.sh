#!/usr/bin/env bash
# shellcheck disable=SC2154  # CEILOMETER_CONF, DEST, ... come from devstack
# devstack plugin for ceilometer-cmt: L3 cache occupancy and memory bandwidth
# meters for ceilometer-polling. See devstack/settings for local.conf.
#
#   stack install      pip-install the plugin (develop mode) where ceilometer
#                      runs the compute agent or the notification agent
#   stack post-config  compute: [cmt] options, privsep helper, our polling
#                      sources; notification: gnocchi_resources.yaml merged,
#                      the guard's event definitions appended
#   unstack            compute: remove the resctrl monitor groups we own

function _cmt_bin {
    echo "${CEILOMETER_BIN_DIR:-$(get_python_exec_prefix)}/$1"
}

function install_ceilometer_cmt {
    # the libvirt extra builds libvirt-python against libvirt-dev
    setup_develop "$CEILOMETER_CMT_DIR" libvirt
}

function configure_ceilometer_cmt_compute {
    iniset "$CEILOMETER_CONF" cmt backend "$CEILOMETER_CMT_BACKEND"
    iniset "$CEILOMETER_CONF" cmt privsep "$CEILOMETER_CMT_PRIVSEP"
    # The privsep daemon reads its own root-owned config, never the agent's.
    # devstack's virtualenv belongs to $STACK_USER (who has full sudo): the
    # helper refuses code owned by anybody but root unless that config says so.
    local conf=$CEILOMETER_CMT_PRIVSEP_CONF staged
    staged=$(mktemp)
    printf '[cmt_privsep]\ntrusted_code_owners = %s\n' "$STACK_USER" > "$staged"
    sudo install -d -o root -g root -m 0755 "$(dirname "$conf")"
    sudo install -o root -g root -m 0644 "$staged" "$conf"
    rm -f "$staged"
    # the context and socket arguments are appended by oslo.privsep
    iniset "$CEILOMETER_CONF" cmt_privsep helper_command \
        "sudo $(_cmt_bin ceilometer-cmt-privsep-helper) --config-file $conf"

    # Add our two sources to the agent's polling.yaml (replacing earlier
    # copies of them), and keep a wildcard source from polling our meters too.
    local polling="$CEILOMETER_CONF_DIR/polling.yaml"
    "${PYTHON:-python3}" - "$polling" "$CEILOMETER_CMT_DIR/etc/polling.yaml" \
        "$CEILOMETER_CMT_CACHE_INTERVAL" "$CEILOMETER_CMT_HOST_INTERVAL" <<'PYEOF'
import os, sys, yaml
target, ours_file, cache_interval, host_interval = sys.argv[1:]
ours = yaml.safe_load(open(ours_file))["sources"]
intervals = {"cmt_cache": int(cache_interval), "cmt_host": int(host_interval)}
for src in ours:
    src["interval"] = intervals[src["name"]]
names = {s["name"] for s in ours}
meters = [m for s in ours for m in s["meters"]]
data = yaml.safe_load(open(target)) if os.path.exists(target) else None
data = data or {"sources": []}
sources = [s for s in data.get("sources", []) if s.get("name") not in names]
for s in sources:
    if "*" in s.get("meters", []):
        s["meters"] += ["!" + m for m in meters if "!" + m not in s["meters"]]
data["sources"] = sources + ours
with open(target, "w") as f:
    yaml.safe_dump(data, f, default_flow_style=False, sort_keys=False)
PYEOF
}

function configure_ceilometer_cmt_notification {
    # The gnocchi publisher reads gnocchi_resources.yaml from the config dir;
    # a file there replaces ceilometer's packaged one: merge, never overwrite.
    local resources="$CEILOMETER_CONF_DIR/gnocchi_resources.yaml"
    if [[ -f $resources ]]; then
        "$(_cmt_bin ceilometer-cmt)" gnocchi-resources --base "$resources" -o "$resources"
    else
        "$(_cmt_bin ceilometer-cmt)" gnocchi-resources -o "$resources"
    fi
    # The guard's notifications become events with our traits (the instance,
    # its project) once our definitions follow ceilometer's. A file in the
    # config dir replaces ceilometer's packaged one: start from that one when
    # there is none, and append ours once, keeping what the site has.
    local events="$CEILOMETER_CONF_DIR/event_definitions.yaml"
    if [[ ! -f $events ]]; then
        "$(_cmt_bin python3)" -c 'import os, shutil, sys, ceilometer
shutil.copyfile(os.path.join(os.path.dirname(ceilometer.__file__), "pipeline", "data",
                             "event_definitions.yaml"), sys.argv[1])' "$events"
    fi
    if ! grep -q '^- event_type: cmt\.guard\.\*' "$events"; then
        { echo; cat "$CEILOMETER_CMT_DIR/etc/ceilometer/cmt_event_definitions.yaml"; } >> "$events"
    fi
}

function configure_ceilometer_cmt_guard {
    iniset "$CEILOMETER_CONF" cmt_guard dry_run "$CEILOMETER_CMT_GUARD_DRY_RUN"
    # $STACK_USER cannot write /run: the guard's lock file lives under $DATA_DIR
    iniset "$CEILOMETER_CONF" cmt_guard lock_file "$DATA_DIR/ceilometer-cmt/guard.lock"
}

function cleanup_ceilometer_cmt {
    if is_service_enabled ceilometer-cmt-guard; then
        stop_process ceilometer-cmt-guard
        sudo "$(_cmt_bin ceilometer-cmt)" cleanup --guard --config-file "$CEILOMETER_CONF" || true
    fi
    sudo "$(_cmt_bin ceilometer-cmt)" cleanup --config-file "$CEILOMETER_CONF" || true
}

if is_service_enabled ceilometer-acompute ceilometer-anotification; then
    if [[ $1 == stack && $2 == install ]]; then
        echo_summary "Installing ceilometer-cmt"
        install_ceilometer_cmt
    elif [[ $1 == stack && $2 == post-config ]]; then
        echo_summary "Configuring ceilometer-cmt"
        if is_service_enabled ceilometer-acompute; then
            configure_ceilometer_cmt_compute
        fi
        if is_service_enabled ceilometer-cmt-guard; then
            configure_ceilometer_cmt_guard
        fi
        if is_service_enabled ceilometer-anotification; then
            configure_ceilometer_cmt_notification
        fi
    elif [[ $1 == stack && $2 == extra ]] && is_service_enabled ceilometer-cmt-guard; then
        run_process ceilometer-cmt-guard \
            "$(_cmt_bin ceilometer-cmt) guard --config-file $CEILOMETER_CONF"
    elif [[ $1 == unstack ]]; then
        if is_service_enabled ceilometer-acompute; then
            cleanup_ceilometer_cmt
        fi
    fi
fi
