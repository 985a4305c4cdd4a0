# Helpers for bench/run.sh: throwaway registries on 127.0.0.1, timing with
# peak memory, access-log counts and medians. Sourced, not run.

readonly HOST=127.0.0.1
export NO_PROXY="127.0.0.1,localhost"
export no_proxy="$NO_PROXY"
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy

readonly CURL=(curl --silent --show-error --fail --noproxy '*' --max-time 120)

# Every registry this script started, by name: PID, host:port, folder.
declare -A REGISTRY_PID=() REGISTRY_HOST=() REGISTRY_DIR=()
BENCH_TMP=""

bench_fail() {
    printf 'bench: error: %s\n' "$*" >&2
    exit 1
}

bench_cleanup() {
    local name
    for name in "${!REGISTRY_PID[@]}"; do
        registry_stop "$name"
    done
    if [[ -n $BENCH_TMP ]]; then
        rm -rf -- "$BENCH_TMP"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# registry_start NAME: starts `docker-registry serve` on a free loopback
# port with its own storage folder and access log, and waits until /v2/
# responds. Sets REGISTRY_HOST[NAME].
registry_start() {
    local name=$1 port dir attempt
    port=$(free_port)
    dir="$BENCH_TMP/registry-$name"
    rm -rf -- "$dir"
    mkdir -p -- "$dir/data"
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: error
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $HOST:$port
  secret: bench-only-http-secret
EOF
    docker-registry serve "$dir/config.yml" >"$dir/access.log" 2>&1 &
    REGISTRY_PID[$name]=$!
    REGISTRY_HOST[$name]="$HOST:$port"
    REGISTRY_DIR[$name]=$dir
    for attempt in $(seq 100); do
        if curl --silent --noproxy '*' --max-time 1 -o /dev/null "http://$HOST:$port/v2/"; then
            return 0
        fi
        kill -0 "${REGISTRY_PID[$name]}" 2>/dev/null ||
            bench_fail "docker-registry $name exited: $(tail -n 5 "$dir/access.log")"
        sleep 0.05
    done
    bench_fail "docker-registry $name did not answer on $HOST:$port within 5 s"
}

# registry_stop NAME: stops that registry by its PID and deletes its storage.
registry_stop() {
    local name=$1 pid=${REGISTRY_PID[$1]:-} attempt
    [[ -n $pid ]] || return 0
    kill "$pid" 2>/dev/null || true
    for attempt in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf -- "${REGISTRY_DIR[$name]}"
    unset "REGISTRY_PID[$name]" "REGISTRY_HOST[$name]" "REGISTRY_DIR[$name]"
}

# log_lines NAME: current number of lines in that registry's access log,
# after letting the registry finish writing the last requests.
log_lines() {
    sleep 0.2
    wc -l <"${REGISTRY_DIR[$1]}/access.log"
}

# log_count NAME FROM REGEX: access-log lines after line FROM whose request
# ("METHOD URI PROTO") matches the extended REGEX.
log_count() {
    local name=$1 from=$2 regex=$3
    sleep 0.2
    tail -n +"$((from + 1))" "${REGISTRY_DIR[$name]}/access.log" |
        grep -E "\] \"$regex" -c || true
}

# log_distinct NAME FROM REGEX: distinct request URIs among those lines.
log_distinct() {
    local name=$1 from=$2 regex=$3
    tail -n +"$((from + 1))" "${REGISTRY_DIR[$name]}/access.log" |
        grep -oE "\] \"$regex[^ ]*" | sort -u | wc -l
}

# measure OUT CMD...: runs CMD under `/usr/bin/time -v`, appends
# "SECONDS PEAK_RSS_KIB" to OUT, and fails the benchmark if CMD fails.
# Wall time comes from the monotonic clock in nanoseconds.
measure() {
    local out=$1 start end status rss
    shift
    # /usr/bin/time runs programs, so a shell function runs in a child bash
    # that gets this script's functions and variables.
    if declare -F "$1" >/dev/null; then
        set -- bash -c "$(declare -f); $(declare -p 2>/dev/null | grep -E '^declare -[^ ]*[rx-]* (CURL|SYNCER|JOBS|BENCH_TMP|SRC|LARGE_DIGEST|LARGE_SIZE)=')"'; "$@"' bench-child "$@"
    fi
    start=$(date +%s%N)
    status=0
    /usr/bin/time -v -o "$BENCH_TMP/time.txt" "$@" >"$BENCH_TMP/last.out" 2>"$BENCH_TMP/last.err" ||
        status=$?
    end=$(date +%s%N)
    if [[ $status -ne 0 ]]; then
        tail -n 20 "$BENCH_TMP/last.out" "$BENCH_TMP/last.err" >&2
        bench_fail "command failed with status $status: $*"
    fi
    rss=$(awk -F': ' '/^[[:space:]]*Maximum resident set size/ {print $2}' "$BENCH_TMP/time.txt")
    printf '%s %s\n' "$(awk -v ns=$((end - start)) 'BEGIN {printf "%.3f", ns / 1e9}')" "$rss" >>"$out"
}

# median_of FILE COLUMN: median of that column (1-based) of FILE.
median_of() {
    awk -v c="$2" '{print $c}' "$1" | sort -g |
        awk '{v[NR] = $1} END {if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

# max_of FILE COLUMN: largest value of that column.
max_of() {
    awk -v c="$2" 'NR == 1 || $c > m {m = $c} END {print m}' "$1"
}

# ratio A B: A / B with two decimals.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}'
}
