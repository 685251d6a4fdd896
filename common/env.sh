# Shared shell helpers of the wrappers (run_*.sh, plot_*.sh, study.sh, pipeline.sh): `source` it.
# The Python tools read booleans with env_flag from common/helpers.py; env_flag here reads them the
# same way (tests/test_helper_copies.py checks that they agree).

# env_flag NAME [DEFAULT]: exit status 0 when $NAME is 1/true/yes, 1 when it is 0/false/no or
# empty (any case, blanks around ignored); unset -> DEFAULT (1/true/yes or 0, the default 0);
# anything else: one `error:` line on stderr and status 2.
env_flag() {
    local name=$1 value
    if [[ -z ${!name+set} ]]; then
        value=${2:-0}
    else
        value=${!name}
    fi
    value="${value#"${value%%[![:space:]]*}"}"
    value="${value%"${value##*[![:space:]]}"}"
    case "${value,,}" in
        1|true|yes) return 0 ;;
        0|false|no|"") return 1 ;;
    esac
    echo "error: $name='${!name}' is not a boolean; use 1/true/yes or 0/false/no" >&2
    return 2
}

# flag NAME --option: append `--option "$NAME"` to the array ARGS when $NAME is set and not empty
# (the tool's own default applies otherwise: defaults live in the Python tools, not here).
flag() {
    if [[ -n ${!1:-} ]]; then
        ARGS+=("$2" "${!1}")
    fi
}

# switch NAME --option: append `--option` to ARGS when $NAME is on (env_flag); a bad value stops.
switch() {
    local status=0
    env_flag "$1" || status=$?
    if [[ $status -eq 0 ]]; then
        ARGS+=("$2")
    elif [[ $status -eq 2 ]]; then
        exit 2
    fi
}

# on_signals: Ctrl-C stops the script with status 130, SIGTERM with 143, like the Python tools. A
# terminal's Ctrl-C and Slurm's or `kill -TERM -- -PGID`'s SIGTERM reach every process of the
# group: the running tool removes what it had half-written and says what it kept, then the script
# stops instead of going on with the next step. (A signal sent to the script alone takes effect
# when the running tool ends.) study.sh calls it, so every wrapper has it.
on_signals() {
    trap 'trap - INT; echo "interrupted (Ctrl-C): ${0##*/} stopped" >&2; exit 130' INT
    trap 'trap - TERM; echo "terminated (SIGTERM): ${0##*/} stopped" >&2; exit 143' TERM
}

# stop_on_signal_status STATUS: a tool (or wrapper) that ended with 130 or 143 was interrupted:
# stop this script with the same status.
stop_on_signal_status() {
    if [[ $1 -eq 130 || $1 -eq 143 ]]; then
        exit "$1"
    fi
}
