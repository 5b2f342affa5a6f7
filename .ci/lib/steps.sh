# Sourced by run-tests: run every .ci/steps/*.sh in name order. Steps with a line "# ci: background" (the chroot
# builders: mostly downloads and unpacking, nothing the other steps need) start first, side by side in the
# background, and are waited for after the foreground steps; each one's output goes to .cache/ci-steps/NAME.log
# and is printed when it is waited for. Every step's wall time is printed ("--- STEP: N s"), and a summary at the
# end. Returns non-zero when any step failed (after all of them ended, so no build is left running).
run_steps() {  # [STEPS_DIR], default .ci/steps
    local dir="${1:-.ci/steps}" logdir=".cache/ci-steps" step name start rc took failed=0 t0=$SECONDS
    local -a bg_steps=() bg_pids=() summary=()
    mkdir -p "$logdir"
    for step in "$dir"/*.sh; do
        grep -q '^# ci: background' "$step" || continue
        name="$(basename "$step" .sh)"
        rm -f "$logdir/$name.rc"
        echo "=== $step (background: $logdir/$name.log)"
        (
            s=$SECONDS
            set +e
            bash "$step" > "$logdir/$name.log" 2>&1
            echo "$? $((SECONDS - s))" > "$logdir/$name.rc"
        ) &
        bg_steps+=("$step")
        bg_pids+=("$!")
    done
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
    local i waited
    for i in "${!bg_steps[@]}"; do
        step="${bg_steps[$i]}"
        name="$(basename "$step" .sh)"
        start=$SECONDS
        wait "${bg_pids[$i]}" || true
        waited=$((SECONDS - start))
        echo "=== $step (background, waited $waited s)"
        cat "$logdir/$name.log"
        read -r rc took < "$logdir/$name.rc" 2>/dev/null || { rc=1; took="?"; }
        echo "--- $step: $took s in the background, rc $rc"
        summary+=("$step $took s (background, waited $waited s) rc $rc")
        [ "$rc" = 0 ] || failed=1
    done
    echo "=== steps done in $((SECONDS - t0)) s"
    printf '    %s\n' "${summary[@]}"
    return "$failed"
}
