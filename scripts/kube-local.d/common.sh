# shellcheck shell=bash
# scripts/kube-local: logging, the components' processes, templates.

log() { echo "kube-local: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Node mode is recorded in the state, so env/status/down know it.
node_mode() { [[ -f $STATE/node ]]; }
# The address clients use for the API server.
server_address() { if node_mode; then echo "$NODE_IP"; else echo "$ADDRESS"; fi; }

pidfile() { echo "$STATE/pids/$1"; }

# True when component $1 runs: its pid file names a live process that
# is still our binary (a stale file after a reboot may name another).
running() {
    local f pid
    f=$(pidfile "$1")
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -- "$1" >/dev/null
}

# Starts component $1 (the remaining arguments: binary and flags) in its
# own session, its output in $STATE/logs/$1.log, unless it runs already.
start() {
    local name=$1
    shift
    if running "$name"; then
        log "$name: already running (pid $(<"$(pidfile "$name")"))"
        return
    fi
    mkdir -p "$STATE/logs" "$STATE/pids"
    setsid "$@" >>"$STATE/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$(pidfile "$name")"
    log "$name: started (pid $!, log $STATE/logs/$name.log)"
}

# Stops component $1: SIGTERM, then SIGKILL after 20 s.
stop() {
    local name=$1 f pid
    f=$(pidfile "$name")
    if running "$name"; then
        pid=$(<"$f")
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 20))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name: did not stop in 20s, killing pid $pid"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "$name: stopped"
    fi
    rm -f "$f"
}

# Polls `$3...` until it succeeds, for at most $1 seconds; $2 says what
# for.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "timed out after ${seconds}s waiting for $what"
            return 1
        fi
        sleep 0.5
    done
}

# Template $1 (a name in $TEMPLATES) on stdout, each ${NAME} replaced by
# the value of the shell variable NAME. Bash alone, so no new tool is
# needed; unlike envsubst, a variable that is not set is an error rather
# than an empty string.
render() {
    local _template=$TEMPLATES/$1 _text _name _value
    _text=$(<"$_template")
    while [[ $_text =~ \$\{([A-Za-z_][A-Za-z0-9_]*)\} ]]; do
        _name=${BASH_REMATCH[1]}
        [[ -v $_name ]] || die "template $_template: \${$_name} is not set"
        _value=${!_name}
        # Quoted: a `&` in the value stays itself (bash 5.2's
        # patsub_replacement would put the match there).
        _text=${_text//"\${$_name}"/"$_value"}
    done
    printf '%s\n' "$_text"
}

# Template $1 rendered into file $2 (mode $3, default 644), which is
# left alone when it already says the same: kube-proxy exits when its
# config file is written, so `up` on a running node must not touch it.
render_to() {
    local template=$1 path=$2 mode=${3:-644}
    render "$template" >"$path.new"
    chmod "$mode" "$path.new"
    if cmp -s "$path.new" "$path"; then
        rm -f "$path.new"
    else
        mv "$path.new" "$path"
    fi
}
