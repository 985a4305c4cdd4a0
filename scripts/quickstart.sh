#!/usr/bin/env bash
# Quick start: run syncer end to end against two throwaway local registries.
#
# Steps: install docker-registry (and curl) with apt-get if missing, build
# syncer, start registries on 127.0.0.1:5001 and 127.0.0.1:5002, push a small
# image as demo/hello:v1 and demo/hello:v2 to the first one, then run syncer's
# plan, apply and a second plan on rules/quickstart.yaml. The script stops both
# registries and removes its temporary files on exit, also after a failure.
#
# Usage: scripts/quickstart.sh   (from any directory)
#
# Environment:
#   QUICKSTART_SKIP_SYNC=1  Skip building and running syncer, so only the
#                           registries and the seed image are set up. Use it to
#                           test this script while syncer does not build.
#   CARGO_TARGET_DIR        Cargo's build directory; the script runs
#                           $CARGO_TARGET_DIR/release/syncer (default: target).
#   QUICKSTART_KEEP=1       After a successful run, leave both registries
#                           running to try your own rules against, and print
#                           the command that stops them and removes their data.
#
# Requires: a Debian-based system for the install step (root, or sudo),
# cargo 1.89 or newer, curl, tar, gzip and sha256sum.
set -euo pipefail

readonly HOST=127.0.0.1
readonly SOURCE_PORT=5001
readonly DESTINATION_PORT=5002
readonly SOURCE_REPOSITORY=demo/hello
readonly DESTINATION_REPOSITORY=mirror/hello
readonly TAGS=(v1 v2)
readonly RULES_FILE=rules/quickstart.yaml
readonly OCI_MANIFEST_TYPE=application/vnd.oci.image.manifest.v1+json
readonly POLICY_RC=/usr/sbin/policy-rc.d
readonly POLICY_RC_BACKUP=/usr/sbin/policy-rc.d.syncer-quickstart

# The registries are on 127.0.0.1, so curl ignores proxy settings (--noproxy)
# and NO_PROXY stops syncer's HTTP client from sending their requests to a proxy.
readonly CURL=(curl --silent --show-error --noproxy '*' --max-time 30)
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"

work_dir=""
registry_pids=()
policy_rc_state=untouched # untouched | created | replaced

heading() {
    printf '\n==> %s\n' "$*"
}

fail() {
    printf 'quickstart: error: %s\n' "$*" >&2
    exit 1
}

run_as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo -- "$@"
    else
        fail "installing packages requires root, and sudo is not installed: rerun as root"
    fi
}

# Stops the registries by PID, restores policy-rc.d and removes temporary
# files. Runs on every exit.
cleanup() {
    local status=$? pid
    if [[ $status == 0 && ${QUICKSTART_KEEP:-0} == 1 && ${#registry_pids[@]} -gt 0 ]]; then
        restore_policy_rc
        echo
        echo "QUICKSTART_KEEP=1: the registries on $HOST:$SOURCE_PORT and $HOST:$DESTINATION_PORT are still running."
        echo "Stop them and remove their data with:"
        echo "  kill ${registry_pids[*]} && rm -rf -- '$work_dir'"
        return
    fi
    for pid in "${registry_pids[@]}"; do
        stop_process "$pid"
    done
    restore_policy_rc
    if [[ -n $work_dir ]]; then
        rm -rf -- "$work_dir"
    fi
}

# Sends SIGTERM, then SIGKILL if the process is still running after 5 seconds.
stop_process() {
    local pid=$1 attempt
    kill "$pid" 2>/dev/null || return 0
    for attempt in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Installs a policy-rc.d that exits 101 ("action forbidden"), so invoke-rc.d
# and deb-systemd-invoke start no service while packages install. Debian's
# docker-registry service would listen on port 5000 on all interfaces.
block_service_starts() {
    if run_as_root test -e "$POLICY_RC"; then
        run_as_root mv -- "$POLICY_RC" "$POLICY_RC_BACKUP"
        policy_rc_state=replaced
    else
        policy_rc_state=created
    fi
    printf '#!/bin/sh\nexit 101\n' | run_as_root tee "$POLICY_RC" >/dev/null
    run_as_root chmod 755 "$POLICY_RC"
}

restore_policy_rc() {
    case $policy_rc_state in
        created) run_as_root rm -f -- "$POLICY_RC" ;;
        replaced) run_as_root mv -f -- "$POLICY_RC_BACKUP" "$POLICY_RC" ;;
    esac
    policy_rc_state=untouched
}

install_packages() {
    local packages=()
    [[ -x /usr/bin/docker-registry ]] || packages+=(docker-registry)
    command -v curl >/dev/null || packages+=(curl)
    if [[ ${#packages[@]} -eq 0 ]]; then
        echo "docker-registry and curl are already installed."
        return
    fi
    command -v apt-get >/dev/null ||
        fail "missing ${packages[*]}, and apt-get is not available: install them, then rerun"

    echo "Installing ${packages[*]} with apt-get (services are not started)."
    block_service_starts
    run_as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    run_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install --yes --no-install-recommends "${packages[@]}"
    restore_policy_rc

    # The package enables its service for the next boot. Disable it, so that no
    # registry listens on all interfaces after a reboot.
    if [[ " ${packages[*]} " == *" docker-registry "* ]] && command -v systemctl >/dev/null; then
        run_as_root systemctl disable --quiet docker-registry.service 2>/dev/null ||
            echo "note: could not disable docker-registry.service; check 'systemctl is-enabled docker-registry'" >&2
    fi
}

check_tools() {
    local tool
    for tool in tar gzip sha256sum; do
        command -v "$tool" >/dev/null || fail "$tool not found in PATH: install it, then rerun"
    done
    if [[ ${QUICKSTART_SKIP_SYNC:-0} != 1 ]] && ! command -v cargo >/dev/null; then
        fail "cargo not found in PATH: install Rust 1.89 or newer (https://rustup.rs), then rerun"
    fi
}

# Succeeds if something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

check_ports_free() {
    local port
    for port in "$@"; do
        if port_in_use "$port"; then
            fail "port $HOST:$port is already in use: stop the program listening on it (see 'ss -ltnp'), then rerun"
        fi
    done
}

# Starts `docker-registry serve` on 127.0.0.1:PORT with its own config and
# storage under $work_dir, then waits until GET /v2/ returns 200.
start_registry() {
    local port=$1
    local dir="$work_dir/registry-$port"
    local config="$dir/config.yml" log="$dir/registry.log" pid attempt

    mkdir -p "$dir/storage"
    cat >"$config" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: $HOST:$port
EOF

    docker-registry serve "$config" >"$log" 2>&1 &
    pid=$!
    registry_pids+=("$pid")
    echo "Started docker-registry on http://$HOST:$port (PID $pid, log $log)."

    # Wait up to 10 seconds.
    for attempt in $(seq 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$log" >&2
            fail "docker-registry on $HOST:$port exited during startup (its log is above)"
        fi
        if "${CURL[@]}" --fail --output /dev/null "http://$HOST:$port/v2/" 2>/dev/null; then
            return
        fi
        sleep 0.1
    done
    cat "$log" >&2
    fail "docker-registry on $HOST:$port did not answer GET /v2/ within 10 seconds"
}

sha256_of() {
    local sum
    sum=$(sha256sum "$1")
    printf 'sha256:%s' "${sum%% *}"
}

size_of() {
    local size
    size=$(wc -c <"$1")
    printf '%s' "$((size))"
}

# Runs curl with the given arguments and fails unless the HTTP status is
# EXPECTED_STATUS. Leaves the response headers and body in $work_dir.
request() {
    local expected_status=$1 description=$2 status
    shift 2
    status=$("${CURL[@]}" --dump-header "$work_dir/response-headers" \
        --output "$work_dir/response-body" --write-out '%{http_code}' "$@") ||
        fail "$description: request failed (curl error above)"
    if [[ $status != "$expected_status" ]]; then
        cat "$work_dir/response-body" >&2
        echo >&2
        fail "$description: expected HTTP $expected_status, got $status (response above)"
    fi
}

# Prints the value of header NAME from the last response of request().
response_header() {
    local name=$1 line
    while IFS= read -r line; do
        line=${line%$'\r'}
        if [[ ${line,,} == "${name,,}:"* ]]; then
            line=${line#*:}
            printf '%s' "${line# }"
        fi
    done <"$work_dir/response-headers"
}

# Uploads FILE as a blob with DIGEST: POST opens an upload session and a single
# PUT to its Location with ?digest= sends the whole blob (monolithic upload).
upload_blob() {
    local registry=$1 repository=$2 file=$3 digest=$4 location separator

    request 202 "opening a blob upload in $registry/$repository" \
        --request POST "http://$registry/v2/$repository/blobs/uploads/"
    location=$(response_header Location)
    case $location in
        /*) location="http://$registry$location" ;;
        "http://$registry/"*) ;;
        *) fail "upload Location '$location' from $registry is not on http://$registry" ;;
    esac

    separator='?'
    [[ $location == *'?'* ]] && separator='&'
    request 201 "uploading blob $digest to $registry/$repository" \
        --request PUT --header 'Content-Type: application/octet-stream' \
        --data-binary "@$file" "$location${separator}digest=$digest"
}

# Builds a one-layer OCI image for TAG in $work_dir/image-TAG and pushes it to
# REGISTRY/REPOSITORY:TAG.
push_image() {
    local registry=$1 repository=$2 tag=$3
    local dir="$work_dir/image-$tag"
    local layer_digest layer_size diff_id config_digest config_size manifest_digest

    # The layer: a gzip-compressed tar of two text files. Fixed owners and
    # mtime plus `gzip -n` make the blob bytes the same on every run.
    mkdir -p "$dir/rootfs/hello"
    printf 'Hello from the syncer quick start, image %s.\n' "$tag" >"$dir/rootfs/hello/message.txt"
    printf '%s\n' "$tag" >"$dir/rootfs/hello/VERSION"
    tar --create --file "$dir/layer.tar" --directory "$dir/rootfs" \
        --sort=name --owner=0 --group=0 --numeric-owner --mtime='2024-01-01 00:00:00Z' hello
    gzip -n -9 --stdout "$dir/layer.tar" >"$dir/layer.tar.gz"
    layer_digest=$(sha256_of "$dir/layer.tar.gz")
    layer_size=$(size_of "$dir/layer.tar.gz")
    # The config lists each layer's diff_id: the digest of the uncompressed tar.
    diff_id=$(sha256_of "$dir/layer.tar")

    printf '{"created":"2024-01-01T00:00:00Z","architecture":"amd64","os":"linux","config":{"WorkingDir":"/hello","Labels":{"org.opencontainers.image.version":"%s"}},"rootfs":{"type":"layers","diff_ids":["%s"]},"history":[{"created":"2024-01-01T00:00:00Z","created_by":"scripts/quickstart.sh"}]}' \
        "$tag" "$diff_id" >"$dir/config.json"
    config_digest=$(sha256_of "$dir/config.json")
    config_size=$(size_of "$dir/config.json")

    printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
        "$OCI_MANIFEST_TYPE" "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$dir/manifest.json"
    manifest_digest=$(sha256_of "$dir/manifest.json")

    upload_blob "$registry" "$repository" "$dir/layer.tar.gz" "$layer_digest"
    upload_blob "$registry" "$repository" "$dir/config.json" "$config_digest"
    request 201 "pushing manifest $registry/$repository:$tag" \
        --request PUT --header "Content-Type: $OCI_MANIFEST_TYPE" \
        --data-binary "@$dir/manifest.json" "http://$registry/v2/$repository/manifests/$tag"

    echo "Pushed $registry/$repository:$tag ($manifest_digest)."
    printf '%s' "$manifest_digest" >"$dir/manifest-digest"
}

# Fails unless REGISTRY/REPOSITORY:TAG exists as an OCI manifest with DIGEST.
check_manifest() {
    local registry=$1 repository=$2 tag=$3 expected_digest=$4 digest
    request 200 "checking manifest $registry/$repository:$tag" \
        --head --header "Accept: $OCI_MANIFEST_TYPE" \
        "http://$registry/v2/$repository/manifests/$tag"
    digest=$(response_header Docker-Content-Digest)
    if [[ $digest != "$expected_digest" ]]; then
        fail "$registry/$repository:$tag has digest '$digest', expected $expected_digest"
    fi
}

build_syncer() {
    heading "Building syncer: cargo build --release --locked"
    cargo build --release --locked
}

run_syncer_steps() {
    local syncer="${CARGO_TARGET_DIR:-target}/release/syncer" status tag

    heading "Planning: $syncer plan $RULES_FILE"
    "$syncer" plan "$RULES_FILE"

    heading "Applying: $syncer apply --auto-approve $RULES_FILE"
    "$syncer" apply --auto-approve "$RULES_FILE"

    heading "Checking that nothing is left to sync: $syncer plan --detailed-exitcode $RULES_FILE"
    status=0
    "$syncer" plan --detailed-exitcode "$RULES_FILE" || status=$?
    case $status in
        0) ;;
        2) fail "plan still lists changes after apply (exit status 2)" ;;
        *) fail "plan --detailed-exitcode failed with exit status $status" ;;
    esac

    heading "Checking the copies in $HOST:$DESTINATION_PORT/$DESTINATION_REPOSITORY with curl"
    for tag in "${TAGS[@]}"; do
        check_manifest "$HOST:$DESTINATION_PORT" "$DESTINATION_REPOSITORY" "$tag" \
            "$(cat "$work_dir/image-$tag/manifest-digest")"
        echo "$HOST:$DESTINATION_PORT/$DESTINATION_REPOSITORY:$tag has the source manifest digest."
    done
}

main() {
    local tag
    # Paths such as rules/quickstart.yaml are relative to the repository root.
    cd "$(dirname "${BASH_SOURCE[0]}")/.."

    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    heading "Checking prerequisites"
    check_tools
    install_packages

    if [[ ${QUICKSTART_SKIP_SYNC:-0} == 1 ]]; then
        echo "QUICKSTART_SKIP_SYNC=1: not building or running syncer."
    else
        build_syncer
    fi

    work_dir=$(mktemp -d "${TMPDIR:-/tmp}/syncer-quickstart.XXXXXX")

    heading "Starting registries on $HOST:$SOURCE_PORT (source) and $HOST:$DESTINATION_PORT (destination)"
    check_ports_free "$SOURCE_PORT" "$DESTINATION_PORT"
    start_registry "$SOURCE_PORT"
    start_registry "$DESTINATION_PORT"

    heading "Pushing $HOST:$SOURCE_PORT/$SOURCE_REPOSITORY with tags ${TAGS[*]}"
    for tag in "${TAGS[@]}"; do
        push_image "$HOST:$SOURCE_PORT" "$SOURCE_REPOSITORY" "$tag"
        check_manifest "$HOST:$SOURCE_PORT" "$SOURCE_REPOSITORY" "$tag" \
            "$(cat "$work_dir/image-$tag/manifest-digest")"
    done

    if [[ ${QUICKSTART_SKIP_SYNC:-0} == 1 ]]; then
        heading "Done (syncer steps skipped)"
        return
    fi
    run_syncer_steps
    heading "Done: syncer copied every tag of $SOURCE_REPOSITORY to $HOST:$DESTINATION_PORT/$DESTINATION_REPOSITORY"
}

# Run main only when executed, so a test can source this file for its functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
