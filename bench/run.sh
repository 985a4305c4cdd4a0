#!/usr/bin/env bash
# Benchmarks `syncer` against `skopeo sync` and a raw curl copy, on
# docker-registry processes it starts on 127.0.0.1 and stops by PID.
#
# Run from the repository root:   bench/run.sh
# Results go to stdout and to bench/out/results.md. Settings (environment):
#   BENCH_REPEAT (3)        runs of each measurement; medians are reported
#   BENCH_SMALL (100)       small single-platform images in the corpus
#   BENCH_INDEXES (20)      two-platform OCI indexes in the corpus
#   BENCH_LARGE_MIB (200)   size of the incompressible layer
#   BENCH_REPOS (1000), BENCH_TAGS (5)   catalog for the plan measurement
#   BENCH_JOBS (8)          syncer --jobs
#
# Needs docker-registry, skopeo, curl, python3 and /usr/bin/time (package
# `time`). Every server binds 127.0.0.1; nothing else is contacted.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

readonly REPEAT=${BENCH_REPEAT:-3}
readonly SMALL=${BENCH_SMALL:-100}
readonly INDEXES=${BENCH_INDEXES:-20}
readonly LARGE_MIB=${BENCH_LARGE_MIB:-200}
readonly REPOS=${BENCH_REPOS:-1000}
readonly TAGS=${BENCH_TAGS:-5}
readonly JOBS=${BENCH_JOBS:-8}
readonly SYNCER=target/release/syncer
readonly SEED=target/debug/examples/bench-seed
readonly OUT_DIR=bench/out
# Access-log request patterns (extended regex on "METHOD URI").
readonly BLOB_GET='GET /v2/[^ ]+/blobs/sha256:'

trap bench_cleanup EXIT
trap "exit 1" INT TERM
BENCH_TMP=$(mktemp -d)
mkdir -p "$OUT_DIR" "$BENCH_TMP/empty-docker-config"
export DOCKER_CONFIG="$BENCH_TMP/empty-docker-config"
# skopeo reads credentials from this empty file, so it connects anonymously.
# It is passed to skopeo alone: docker-registry reads every REGISTRY_*
# variable as a configuration override and exits on this one.
echo '{}' >"$BENCH_TMP/auth.json"
results="$OUT_DIR/results.md"

for tool in docker-registry skopeo curl python3 /usr/bin/time; do
    command -v "$tool" >/dev/null || bench_fail "$tool not found: install it, then rerun"
done

echo "==> building syncer (release) and the corpus seeder"
cargo build --release --quiet --bin syncer
# The seeder only builds test data. The dev profile shares its compiled
# dependencies (optimised, see Cargo.toml) with `cargo test`, which saves
# a release build of testkit's.
cargo build --quiet --example bench-seed

echo "==> starting source registries and seeding the corpus"
registry_start source
registry_start catalog
SRC=${REGISTRY_HOST[source]}
CAT=${REGISTRY_HOST[catalog]}
"$SEED" corpus "http://$SRC" "$SMALL" "$INDEXES"
LARGE_DIGEST=$("$SEED" large "http://$SRC" "$LARGE_MIB")
LARGE_SIZE=$(curl --silent --noproxy '*' --head "http://$SRC/v2/large/blob/blobs/$LARGE_DIGEST" |
    awk 'tolower($1) == "content-length:" {print $2}' | tr -d '\r')
"$SEED" catalog "http://$CAT" "$REPOS" "$TAGS"

# --- rules and skopeo YAML ----------------------------------------------------

# syncer_rules FILE SOURCE_GLOB DESTINATION_HOST...: one rule copying the
# glob's repositories to "{repo}" in each destination.
syncer_rules() {
    local file=$1 source=$2 dest
    shift 2
    {
        echo "registries:"
        echo "  $SRC: {tls: disabled}"
        echo "  $CAT: {tls: disabled}"
        for dest in "$@"; do
            echo "  $dest: {tls: disabled}"
        done
        echo "rules:"
        echo "  - source: $source"
        echo "    destinations:"
        for dest in "$@"; do
            echo "      - \"$dest/{repo}\""
        done
    } >"$file"
}

# The corpus as skopeo's source YAML: every tag of every repository.
{
    echo "$SRC:"
    echo "  tls-verify: false"
    echo "  images:"
    for i in $(seq 0 $((SMALL - 1))); do echo "    small/s-$i: []"; done
    for i in $(seq 0 $((INDEXES - 1))); do echo "    multi/m-$i: []"; done
} >"$BENCH_TMP/skopeo-corpus.yaml"
{
    echo "$SRC:"
    echo "  tls-verify: false"
    echo "  images:"
    echo "    large/blob: []"
} >"$BENCH_TMP/skopeo-large.yaml"

run_syncer() {
    "$SYNCER" -q apply --auto-approve --jobs "$JOBS" "$@"
}

# run_skopeo YAML DESTINATION_HOST: copies every image, indexes whole.
run_skopeo() {
    REGISTRY_AUTH_FILE="$BENCH_TMP/auth.json" \
        skopeo sync --all --retry-times 0 --src yaml --dest docker \
        --dest-tls-verify=false "$1" "$2"
}

# catalog_size HOST: repositories in that registry's catalog.
catalog_size() {
    "${CURL[@]}" "http://$1/v2/_catalog?n=1000" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["repositories"] or []))'
}

corpus_rules="$BENCH_TMP/corpus.yaml"
large_rules="$BENCH_TMP/large.yaml"
images=$((SMALL + INDEXES))

# --- 1. cold copy -------------------------------------------------------------

echo "==> 1. cold copy of $images images, $REPEAT runs each, alternating"
for rep in $(seq "$REPEAT"); do
    order=(syncer skopeo)
    ((rep % 2 == 0)) && order=(skopeo syncer)
    for tool in "${order[@]}"; do
        registry_start cold
        dest=${REGISTRY_HOST[cold]}
        if [[ $tool == syncer ]]; then
            syncer_rules "$corpus_rules" "$SRC/{small,multi}/*" "$dest"
            measure "$BENCH_TMP/cold-syncer" run_syncer "$corpus_rules"
        else
            measure "$BENCH_TMP/cold-skopeo" run_skopeo "$BENCH_TMP/skopeo-corpus.yaml" "$dest"
        fi
        copied=$(catalog_size "$dest")
        [[ $copied -eq $images ]] || bench_fail "$tool cold copy left $copied of $images repositories"
        registry_stop cold
    done
done

# --- 2. no-op -----------------------------------------------------------------

echo "==> 2. no-op runs, everything in sync"
registry_start noop-syncer
registry_start noop-skopeo
syncer_rules "$corpus_rules" "$SRC/{small,multi}/*" "${REGISTRY_HOST[noop-syncer]}"
run_syncer "$corpus_rules" >/dev/null
run_skopeo "$BENCH_TMP/skopeo-corpus.yaml" "${REGISTRY_HOST[noop-skopeo]}" >/dev/null
for rep in $(seq "$REPEAT"); do
    measure "$BENCH_TMP/noop-syncer" run_syncer "$corpus_rules"
    measure "$BENCH_TMP/noop-skopeo" run_skopeo "$BENCH_TMP/skopeo-corpus.yaml" "${REGISTRY_HOST[noop-skopeo]}"
done
registry_stop noop-syncer
registry_stop noop-skopeo

# --- 3. fan-out to three destinations -----------------------------------------

echo "==> 3. fan-out to three destinations"
skopeo_three() {
    local dest
    for dest in "$@"; do
        run_skopeo "$BENCH_TMP/skopeo-corpus.yaml" "$dest"
    done
}
for rep in $(seq "$REPEAT"); do
    order=(syncer skopeo)
    ((rep % 2 == 0)) && order=(skopeo syncer)
    for tool in "${order[@]}"; do
        registry_start fan1
        registry_start fan2
        registry_start fan3
        dests=("${REGISTRY_HOST[fan1]}" "${REGISTRY_HOST[fan2]}" "${REGISTRY_HOST[fan3]}")
        before=$(log_lines source)
        if [[ $tool == syncer ]]; then
            syncer_rules "$corpus_rules" "$SRC/{small,multi}/*" "${dests[@]}"
            measure "$BENCH_TMP/fan-syncer" run_syncer "$corpus_rules"
        else
            measure "$BENCH_TMP/fan-skopeo" skopeo_three "${dests[@]}"
        fi
        gets=$(log_count source "$before" "$BLOB_GET")
        distinct=$(log_distinct source "$before" "$BLOB_GET")
        echo "$gets $distinct" >>"$BENCH_TMP/fan-gets-$tool"
        registry_stop fan1
        registry_stop fan2
        registry_stop fan3
    done
done

# --- 4. one large blob --------------------------------------------------------

echo "==> 4. the $LARGE_MIB MiB layer: syncer against curl GET | curl PUT"
# raw_copy DESTINATION_HOST: the physical limit, one GET piped into one
# monolithic upload, no verification on the client side.
raw_copy() {
    local dest=$1 location
    location=$("${CURL[@]}" -X POST -D - -o /dev/null "http://$dest/v2/raw/blob/blobs/uploads/" |
        awk 'tolower($1) == "location:" {print $2}' | tr -d '\r')
    [[ $location == /* ]] && location="http://$dest$location"
    "${CURL[@]}" "http://$SRC/v2/large/blob/blobs/$LARGE_DIGEST" |
        "${CURL[@]}" -X PUT -H "Content-Type: application/octet-stream" \
            -H "Content-Length: $LARGE_SIZE" -T - "$location&digest=$LARGE_DIGEST" -o /dev/null
}
for rep in $(seq "$REPEAT"); do
    order=(syncer curl)
    ((rep % 2 == 0)) && order=(curl syncer)
    for tool in "${order[@]}"; do
        registry_start large
        dest=${REGISTRY_HOST[large]}
        if [[ $tool == syncer ]]; then
            syncer_rules "$large_rules" "$SRC/large/blob" "$dest"
            # A repository source maps to the destination as given.
            sed -i "s|\"$dest/{repo}\"|$dest/large/blob|" "$large_rules"
            measure "$BENCH_TMP/large-syncer" run_syncer "$large_rules"
            "${CURL[@]}" --head -o /dev/null "http://$dest/v2/large/blob/blobs/$LARGE_DIGEST"
        else
            measure "$BENCH_TMP/large-curl" raw_copy "$dest"
            "${CURL[@]}" --head -o /dev/null "http://$dest/v2/raw/blob/blobs/$LARGE_DIGEST"
        fi
        registry_stop large
    done
done

# --- 6. plan over a large catalog ---------------------------------------------

echo "==> 6. syncer plan over $REPOS repositories x $TAGS tags, in sync"
registry_start plan
PLAN_DEST=${REGISTRY_HOST[plan]}
plan_rules="$BENCH_TMP/plan.yaml"
syncer_rules "$plan_rules" "$CAT/cat/*" "$PLAN_DEST"
run_syncer "$plan_rules" >/dev/null
# plan_case LABEL GLOB REPOSITORIES: times `syncer plan` over the glob and
# counts the requests each registry received.
plan_case() {
    local label=$1 glob=$2 repos=$3 rules="$BENCH_TMP/plan-$1.yaml" src_from dst_from
    syncer_rules "$rules" "$CAT/$glob" "$PLAN_DEST"
    for rep in $(seq "$REPEAT"); do
        src_from=$(log_lines catalog)
        dst_from=$(log_lines plan)
        measure "$BENCH_TMP/plan-$label" "$SYNCER" -q plan --jobs "$JOBS" "$rules"
        grep -q '^No changes\.' "$BENCH_TMP/last.out" || bench_fail "plan over $glob is not in sync"
        echo "$((repos * TAGS)) $(log_count catalog "$src_from" 'HEAD ') $(log_count plan "$dst_from" 'HEAD ') $(log_count catalog "$src_from" '[A-Z]+ ') $(log_count plan "$dst_from" '[A-Z]+ ')" \
            >>"$BENCH_TMP/plan-requests-$label"
    done
}
plan_case tenth 'cat/r00[0-9][0-9]' 100
plan_case full 'cat/*' "$REPOS"
registry_stop plan

# --- report -------------------------------------------------------------------

cold_syncer=$(median_of "$BENCH_TMP/cold-syncer" 1)
cold_skopeo=$(median_of "$BENCH_TMP/cold-skopeo" 1)
noop_syncer=$(median_of "$BENCH_TMP/noop-syncer" 1)
noop_skopeo=$(median_of "$BENCH_TMP/noop-skopeo" 1)
fan_syncer=$(median_of "$BENCH_TMP/fan-syncer" 1)
fan_skopeo=$(median_of "$BENCH_TMP/fan-skopeo" 1)
large_syncer=$(median_of "$BENCH_TMP/large-syncer" 1)
large_curl=$(median_of "$BENCH_TMP/large-curl" 1)
plan_row() {
    local label=$1 file="$BENCH_TMP/plan-requests-$1" tags seconds
    tags=$(awk 'NR == 1 {print $1}' "$file")
    seconds=$(median_of "$BENCH_TMP/plan-$label" 1)
    printf '| %s | %s | %s | %.2f | %s | %s | %s |\n' "$tags" "$seconds" \
        "$(awk -v s="$seconds" -v t="$tags" 'BEGIN {printf "%.3f", s * 1000 / t}')" \
        "$(awk 'NR == 1 {print ($4 + $5) / $1}' "$file")" \
        "$(awk 'NR == 1 {printf "%.2f", $2 / $1}' "$file")" \
        "$(awk 'NR == 1 {printf "%.2f", $3 / $1}' "$file")" \
        "$(max_of "$BENCH_TMP/plan-$label" 2)"
}

{
    echo "## Results ($(date -u +%Y-%m-%d), $REPEAT runs each, medians)"
    echo
    echo "| measurement | syncer | other | ratio | target |"
    echo "|---|---|---|---|---|"
    echo "| 1. cold copy, $images images (s) | $cold_syncer | skopeo $cold_skopeo | $(ratio "$cold_syncer" "$cold_skopeo") | <= 0.6 |"
    echo "| 2. no-op, all in sync (s) | $noop_syncer | skopeo $noop_skopeo | $(ratio "$noop_syncer" "$noop_skopeo") | <= 0.3 |"
    echo "| 3. fan-out to 3 registries (s) | $fan_syncer | skopeo x3 $fan_skopeo | $(ratio "$fan_syncer" "$fan_skopeo") | - |"
    echo "| 4. $LARGE_MIB MiB layer (s) | $large_syncer | curl $large_curl | $(ratio "$large_syncer" "$large_curl") | <= 1.2 |"
    echo
    echo "Source blob GETs in the fan-out (GETs / distinct blobs, per run):"
    echo "syncer: $(awk '{printf "%s/%s ", $1, $2}' "$BENCH_TMP/fan-gets-syncer"),"
    echo "skopeo x3: $(awk '{printf "%s/%s ", $1, $2}' "$BENCH_TMP/fan-gets-skopeo")."
    echo
    echo "5. Peak RSS of syncer (max over runs, KiB): fan-out $(max_of "$BENCH_TMP/fan-syncer" 2)," \
        "large layer $(max_of "$BENCH_TMP/large-syncer" 2), cold copy $(max_of "$BENCH_TMP/cold-syncer" 2);" \
        "skopeo cold copy $(max_of "$BENCH_TMP/cold-skopeo" 2). Target <= 65536 KiB."
    echo
    echo "6. syncer plan, destination in sync:"
    echo
    echo "| tags | seconds | ms per tag | requests per tag | source HEADs per tag | destination HEADs per tag | peak RSS (KiB) |"
    echo "|---|---|---|---|---|---|---|"
    plan_row tenth
    plan_row full
    echo
    echo "All runs (seconds, peak RSS KiB):"
    echo
    for file in cold-syncer cold-skopeo noop-syncer noop-skopeo fan-syncer fan-skopeo large-syncer large-curl plan-tenth plan-full; do
        echo "- $file: $(awk '{printf "%s (%s) ", $1, $2}' "$BENCH_TMP/$file")"
    done
} | tee "$results"
