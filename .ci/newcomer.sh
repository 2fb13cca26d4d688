#!/usr/bin/env bash
# The README's first command, run the way a newcomer runs it: in a fresh `git clone` of HEAD,
# `cargo run --release -- demo` exactly, then the curl lines the demo prints, exactly as
# printed. Checks that the send is queued and the echo contact's answer reaches the inbox,
# then stops the demo with SIGINT (Ctrl-C) and checks that it exits 0. Every wait is bounded.
# Called by .ci/run after `cargo test`; needs git, curl and the Rust toolchain.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_TIMEOUT_SECONDS=1800
LINK_TIMEOUT_SECONDS=30
CURL_TIMEOUT_SECONDS=30
STOP_TIMEOUT_SECONDS=10

work=$(mktemp -d)
demo_pid=""
cleanup() {
    if [[ -n "$demo_pid" ]] && kill -0 "$demo_pid" 2>/dev/null; then
        kill -KILL "$demo_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "newcomer: $*" >&2
    echo "--- demo stdout" >&2
    cat "$work/demo.out" >&2 || true
    echo "--- demo stderr (last 40 lines)" >&2
    tail -n 40 "$work/demo.err" >&2 || true
    exit 1
}

# HEAD only: what a newcomer clones is what was committed, not this tree's uncommitted files.
git clone --quiet --no-checkout "$repo" "$work/interopd"
git -C "$work/interopd" checkout --quiet --detach "$(git -C "$repo" rev-parse HEAD)"
cd "$work/interopd"

# Build into the CI tree's target/, not the clone's own empty one. The clone's sources are
# still what gets built (cargo compiles its crate again because the path differs, about 40 s
# with LTO), and `cargo run` picks the binary exactly as with an empty target dir, but the
# release-built dependencies are reused: on a machine that keeps target/ between runs this step
# then costs under a minute instead of a full release build from nothing.
export CARGO_TARGET_DIR="$repo/target"

# `cargo run` replaces itself with the binary (exec), so $! is the demo once it has started.
cargo run --release -- demo >"$work/demo.out" 2>"$work/demo.err" &
demo_pid=$!

deadline=$((SECONDS + BUILD_TIMEOUT_SECONDS))
until [[ $(grep -c '^  curl ' "$work/demo.out" || true) -ge 3 ]]; do
    kill -0 "$demo_pid" 2>/dev/null || fail "the demo exited before printing its curl lines"
    ((SECONDS < deadline)) || fail "no curl lines within $BUILD_TIMEOUT_SECONDS s"
    sleep 1
done
mapfile -t curl_lines < <(sed -n 's/^  \(curl .*\)$/\1/p' "$work/demo.out")
api=$(sed -n 's/^  API: *\(http:[^ ]*\)$/\1/p' "$work/demo.out")
[[ -n "$api" ]] || fail "the demo did not print its API address"

deadline=$((SECONDS + LINK_TIMEOUT_SECONDS))
until curl -s --max-time 2 "$api/healthz" | grep -q '"link":"up"'; do
    ((SECONDS < deadline)) || fail "the demo's link was not up within $LINK_TIMEOUT_SECONDS s"
    sleep 1
done

# Runs one printed line as printed; the line and curl's progress meter go to stderr, the
# answer to stdout.
run_printed() {
    echo "\$ $1" >&2
    timeout "$CURL_TIMEOUT_SECONDS" bash -c "$1" || fail "exit status $? from: $1"
}

sent=$(run_printed "${curl_lines[0]}")
echo "$sent"
grep -q '"status":"queued"' <<<"$sent" || fail "the send was not queued: $sent"
inbox=$(run_printed "${curl_lines[1]}")
echo "$inbox"
grep -q 'echo: Hello from the demo' <<<"$inbox" || fail "no echo in the inbox: $inbox"
contacts=$(run_printed "${curl_lines[2]}")
echo "$contacts"
grep -q '+15550100' <<<"$contacts" || fail "the echo contact is not listed: $contacts"

kill -INT "$demo_pid"
deadline=$((SECONDS + STOP_TIMEOUT_SECONDS))
while kill -0 "$demo_pid" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "the demo did not stop within $STOP_TIMEOUT_SECONDS s of SIGINT"
    sleep 0.2
done
status=0
wait "$demo_pid" || status=$?
demo_pid=""
((status == 0)) || fail "the demo exited with status $status after SIGINT"
echo "newcomer: the README's demo works as printed in a fresh clone"
