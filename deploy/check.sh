#!/usr/bin/env bash
# Runs every infrastructure check of the deployment files, offline, on a Debian 12 machine that
# has the Rust toolchain, Python 3.11 and git. Installs what it needs itself, idempotently:
#   - `systemd` (for systemd-analyze) with apt-get, only when systemd-analyze is missing;
#   - the pinned Python tools of deploy/requirements.txt into a venv (default .cache/deploy-venv
#     in the repository, or $LOGPIPE_DEPLOY_VENV), only when the pins changed since the last run.
# Builds the service binaries (cargo build --bins) unless $LOGPIPE_BIN_DIR points at built ones.
#
# Usage: deploy/check.sh [CHECK...]   CHECK is one of: systemd compose compose-configs ansible
#        terraform kubernetes kubernetes-configs (default: all). Exit status 0 only if every
#        check passed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY="$REPO/deploy"
VENV=${LOGPIPE_DEPLOY_VENV:-$REPO/.cache/deploy-venv}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/logpipe-deploy-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SERVICES=(agent mirror validator schema-store cep lake)
ALL_CHECKS=(systemd compose compose-configs ansible terraform kubernetes kubernetes-configs)

passed=0
failed=0
failures=()

log() { printf '==> %s\n' "$*" >&2; }

# Runs one named check and records its outcome without stopping the others.
run_check() {
    local name=$1 start=$SECONDS
    shift
    log "check $name"
    if "$@"; then
        passed=$((passed + 1))
        log "check $name: ok ($((SECONDS - start)) s)"
    else
        failed=$((failed + 1))
        failures+=("$name")
        log "check $name: FAILED ($((SECONDS - start)) s)"
    fi
}

ensure_systemd_analyze() {
    command -v systemd-analyze >/dev/null && return
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    log "installing systemd (for systemd-analyze)"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
}

# The venv is reused while requirements.txt and constraints.txt are unchanged (their hash is kept
# in the venv), so a warm run costs nothing here.
ensure_venv() {
    [[ ":$PATH:" != *":$VENV/bin:"* ]] || return 0
    local want have=""
    want=$(cat "$DEPLOY/requirements.txt" "$DEPLOY/constraints.txt" | sha256sum | cut -d' ' -f1)
    [[ -f "$VENV/.deploy-pins" ]] && have=$(cat "$VENV/.deploy-pins")
    if [[ "$want" != "$have" ]]; then
        log "installing the deploy tools into $VENV (pinned, once)"
        [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
        # Never committed: the venv ignores itself wherever it lives.
        echo '*' >"$VENV/.gitignore"
        "$VENV/bin/pip" install -q --disable-pip-version-check \
            -r "$DEPLOY/requirements.txt" -c "$DEPLOY/constraints.txt"
        echo "$want" >"$VENV/.deploy-pins"
    fi
    export PATH="$VENV/bin:$PATH"
    # The tools must not find settings of the machine they run on.
    export ANSIBLE_CONFIG="$REPO/ansible/ansible.cfg"
}

BIN_DIR=""
ensure_binaries() {
    [[ -z "$BIN_DIR" ]] || return 0
    if [[ -n "${LOGPIPE_BIN_DIR:-}" ]]; then
        BIN_DIR=$LOGPIPE_BIN_DIR
    else
        local target=${CARGO_TARGET_DIR:-$REPO/target}
        log "building the service binaries"
        # The same command as the test script's, so that after it this is a no-op.
        (cd "$REPO" && cargo build -q --workspace --bins)
        BIN_DIR=$target/debug
    fi
    local name
    for name in "${SERVICES[@]}"; do
        [[ -x "$BIN_DIR/logpipe-$name" ]] || { echo "missing binary $BIN_DIR/logpipe-$name" >&2; return 1; }
    done
}

# A root directory with the built binaries where the units expect them, the host's own system
# units (for sysinit.target and friends) and the given units and drop-ins.
stage_root() {
    local root=$1 name
    shift
    mkdir -p "$root/usr/local/bin" "$root/usr/lib/systemd" "$root/etc/systemd/system"
    ln -sfn /lib/systemd/system "$root/usr/lib/systemd/system"
    for name in "${SERVICES[@]}"; do
        ln -f "$BIN_DIR/logpipe-$name" "$root/usr/local/bin/" 2>/dev/null ||
            cp -f "$BIN_DIR/logpipe-$name" "$root/usr/local/bin/"
    done
    cp -r "$@" "$root/etc/systemd/system/"
}

# `systemd-analyze verify` must print nothing at all (unknown keys are only warnings there).
verify_units() {
    local root=$1 out ok=0 unit
    shift
    for unit in "$@"; do
        out=$(systemd-analyze verify --root="$root" "$unit" 2>&1) || ok=1
        if [[ -n "$out" ]]; then
            printf '%s: systemd-analyze verify:\n%s\n' "$unit" "$out" >&2
            ok=1
        fi
    done
    return $ok
}

# The units of deploy/systemd verify cleanly against the built binaries, and `security` scores
# each, with the shared hardening drop-in, below 3.0.
check_systemd() {
    local root="$WORK/systemd-root" ok=0 unit out exposure
    stage_root "$root" "$DEPLOY"/systemd/*
    local units=()
    for unit in "${SERVICES[@]}"; do units+=("logpipe-$unit.service"); done
    verify_units "$root" "${units[@]}" || ok=1
    for unit in "${units[@]}"; do
        out=$(systemd-analyze security --offline=true --root="$root" --no-pager "$unit" 2>&1) || true
        exposure=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
        if [[ -z "$exposure" ]]; then
            printf '%s: no exposure score:\n%s\n' "$unit" "$out" >&2
            ok=1
        elif awk -v e="$exposure" 'BEGIN { exit !(e < 3.0) }'; then
            echo "$unit: exposure $exposure"
        else
            printf '%s: exposure %s is not below 3.0:\n%s\n' "$unit" "$exposure" "$(grep '✗' <<<"$out")" >&2
            ok=1
        fi
    done
    return $ok
}

# Syntax, lint at the production profile, and the logpipe_* roles (the agent's among them) applied
# twice to a staging root with `-c local` (the second run must change nothing; the configs they
# render pass the real binaries' `check`), their units verified there.
check_ansible() {
    local root="$WORK/ansible-root" ok=0 run out changed
    (cd "$REPO/ansible" &&
        ansible-playbook --syntax-check site.yml agents.yml >/dev/null &&
        ansible-lint --offline --profile production --nocolor site.yml agents.yml tests/staging.yml) || ok=1
    mkdir -p "$root"
    for run in 1 2; do
        out=$(cd "$REPO/ansible" && ansible-playbook -c local -i localhost, tests/staging.yml \
            -e logpipe_root="$root" -e logpipe_binary_dir="$BIN_DIR" 2>&1) || { echo "$out" >&2; return 1; }
        changed=$(sed -n 's/^localhost *:.* changed=\([0-9]*\).*/\1/p' <<<"$out")
        echo "logpipe_* roles, run $run into a staging root: changed=$changed"
    done
    if [[ "$changed" != 0 ]]; then
        echo "the second run changed something: the role is not idempotent" >&2
        echo "$out" >&2
        ok=1
    fi
    mkdir -p "$root/usr/lib/systemd"
    ln -sfn /lib/systemd/system "$root/usr/lib/systemd/system"
    local units=() name
    for name in "${SERVICES[@]}"; do units+=("logpipe-$name.service"); done
    verify_units "$root" "${units[@]}" && echo "staged units: systemd-analyze verify clean" || ok=1
    return $ok
}

# Formatting (Terraform 1.0.3, so nothing newer than 1.0 syntax), every file parsed and the
# module wiring checked (python-hcl2), and checkov with no failed check (skips carry their
# reason next to the resource); the service configs the instances get pass the real `check`, and
# the user data templates render (with Terraform) to bash scripts that parse.
check_terraform() {
    local ok=0
    terraform -chdir="$REPO/terraform" fmt -check -recursive -diff || ok=1
    python "$DEPLOY/checks/terraform_modules.py" "$REPO/terraform" || return 1
    checkov -d "$REPO/terraform" --framework terraform --skip-download --quiet --compact || ok=1
    python "$DEPLOY/checks/terraform_configs.py" "$REPO/terraform/modules/services/configs" "$BIN_DIR" || ok=1
    python "$DEPLOY/checks/terraform_user_data.py" "$REPO/terraform/modules" || ok=1
    return $ok
}

# Schema and references of the compose file (no Docker engine needed).
check_compose() {
    docker-compose -f "$REPO/docker-compose.yml" config -q
}

# Every service config the compose file mounts passes that service's real `check` command.
check_compose_configs() {
    python "$DEPLOY/checks/compose_configs.py" "$REPO/docker-compose.yml" "$BIN_DIR"
}

# The manifests of deploy/kubernetes, offline: built-in kinds validated strictly against the
# schemas kubernetes-validate ships (oldest supported and newest Kubernetes), the KEDA
# ScaledObject against its CRD's required fields, the wiring between resources (probes on the
# telemetry port, selectors, the autoscaled Deployment and its consumer group), and checkov with
# no failed check (skips carry their reason in a checkov.io/skip annotation on the resource).
check_kubernetes() {
    local ok=0
    python "$DEPLOY/checks/kubernetes_manifests.py" "$DEPLOY/kubernetes" || ok=1
    checkov -d "$DEPLOY/kubernetes" --framework kubernetes --skip-download --quiet --compact || ok=1
    return $ok
}

# Every service config the manifests' ConfigMaps hold passes that service's real `check` command.
check_kubernetes_configs() {
    python "$DEPLOY/checks/kubernetes_configs.py" "$DEPLOY/kubernetes" "$BIN_DIR"
}

main() {
    local checks=("$@")
    [[ ${#checks[@]} -gt 0 ]] || checks=("${ALL_CHECKS[@]}")
    local start=$SECONDS check
    for check in "${checks[@]}"; do
        case $check in
            systemd) ensure_systemd_analyze; ensure_binaries; run_check systemd check_systemd ;;
            terraform) ensure_venv; ensure_binaries; run_check terraform check_terraform ;;
            compose) ensure_venv; run_check compose check_compose ;;
            ansible) ensure_systemd_analyze; ensure_venv; ensure_binaries; run_check ansible check_ansible ;;
            compose-configs) ensure_venv; ensure_binaries; run_check compose-configs check_compose_configs ;;
            kubernetes) ensure_venv; run_check kubernetes check_kubernetes ;;
            kubernetes-configs) ensure_venv; ensure_binaries; run_check kubernetes-configs check_kubernetes_configs ;;
            *) echo "unknown check $check (one of: ${ALL_CHECKS[*]})" >&2; exit 2 ;;
        esac
    done
    log "deploy checks took $((SECONDS - start)) s"
    ((failed == 0)) || log "failed: ${failures[*]}"
    echo "deploy: $passed passed, $failed failed"
    ((failed == 0))
}

# On one line, so that bash has read the whole script before running it (safe to edit meanwhile).
main "$@"; exit $?
