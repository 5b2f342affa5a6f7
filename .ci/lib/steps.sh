# Sourced by run-tests: run every .ci/steps/*.sh in name order, in two lanes. Steps with a line "# ci: background"
# (the chroot builders: downloads and unpacking, nothing the other steps need) run one after another in a
# background lane that starts first; the other steps run in the foreground lane meanwhile. One background lane, not
# one per chroot: on a 2-core machine three parallel mmdebstrap builds took 328 s; alone each took 51-61 s.
# Each background step's output goes to .cache/ci-steps/NAME.log and is printed when it is waited for. Every step's
# wall time is printed ("--- STEP: N s"), and a summary at the end. Returns non-zero when any step failed (after
# both lanes ended, so no build is left running).
run_steps() {  # [STEPS_DIR], default .ci/steps
    local dir="${1:-.ci/steps}" logdir=".cache/ci-steps" step name start rc took failed=0 t0=$SECONDS
    local -a bg_steps=() bg_pids=() summary=()
    mkdir -p "$logdir"
    for step in "$dir"/*.sh; do
        grep -q '^# ci: background' "$step" || continue
        name="$(basename "$step" .sh)"
        rm -f "$logdir/$name.rc"
        echo "=== $step (background lane: $logdir/$name.log)"
        bg_steps+=("$step")
    done
    (
        set +e
        for step in "${bg_steps[@]}"; do
            name="$(basename "$step" .sh)"
            s=$SECONDS
            bash "$step" > "$logdir/$name.log" 2>&1
            echo "$? $((SECONDS - s))" > "$logdir/$name.rc"
        done
    ) &
    bg_pids+=("$!")
    for step in "$dir"/*.sh; do
        grep -q '^# ci: background' "$step" && continue
        echo "=== $step"
        start=$SECONDS
        rc=0
        bash "$step" || rc=$?
        echo "--- $step: $((SECONDS - start)) s, rc $rc"
        summary+=("$step $((SECONDS - start)) s rc $rc")
        [ "$rc" = 0 ] || failed=1
        [ "$failed" = 0 ] || break
    done
    local waited
    start=$SECONDS
    wait "${bg_pids[0]}" || true
    waited=$((SECONDS - start))
    echo "=== background lane: waited $waited s for it after the foreground steps"
    for step in "${bg_steps[@]}"; do
        name="$(basename "$step" .sh)"
        echo "=== $step (background)"
        cat "$logdir/$name.log" 2>/dev/null
        read -r rc took < "$logdir/$name.rc" 2>/dev/null || { rc=1; took="?"; }
        echo "--- $step: $took s in the background, rc $rc"
        summary+=("$step $took s (background) rc $rc")
        [ "$rc" = 0 ] || failed=1
    done
    echo "=== steps done in $((SECONDS - t0)) s (waited $waited s for the background lane)"
    printf '    %s\n' "${summary[@]}"
    return "$failed"
}
