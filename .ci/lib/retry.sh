# Sourced by the CI steps: retry a network-bound command (apt, mmdebstrap, pip) a few times, because a mirror
# hiccup should not turn CI red. Usage: retry CMD ARGS...   (optional: RETRY_CLEANUP="rm -rf dir" between tries)
retry() {
    local attempt
    for attempt in 1 2 3; do
        if "$@"; then
            return 0
        fi
        echo "[retry] attempt $attempt failed: $*" >&2
        if [ -n "${RETRY_CLEANUP:-}" ]; then eval "$RETRY_CLEANUP"; fi
        sleep $((attempt * 10))
    done
    "$@"
}
