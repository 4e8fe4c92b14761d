#!/bin/sh
# One salt-deploy step for a CI job, used as it is by examples/Jenkinsfile and examples/gitlab-ci.yml.
#
#   sh examples/ci-deploy.sh plan|release|promote|abort
#
# Every value comes from the environment (a CI server passes its job parameters that way), and each one
# reaches salt-run as one quoted argument: nothing a user types into a job parameter is ever shell text.
#   PROJECT       the project (deploy:projects:<project>)
#   DEPLOY_ENV    the env (one of the project's envs, e.g. test or pro in pillar/deploy/rainbow.sls)
#   REF           optional, plan/release only: the branch, tag or commit (CI: the commit the pipeline tested)
#   CI_BY         optional: the CI job's identity, recorded beside the OS user (by=)
#   LOCK_RETRIES  attempts while the env is locked by another run (exit 3; default 10)
#   LOCK_WAIT     seconds to wait before the next attempt (default 60)
#
# Writes deploy.json (salt-run --out=json: exactly one JSON document; progress goes to stderr) and exits
# with the runner's code:
#   0 success · 1 failed · 2 bad input (never retried) · 3 still locked · 4 aborted ·
#   5 paused at a gate: the run keeps the lock until `promote` or `abort` is run
set -u

action=${1:-}
case "$action" in
    plan) fun=deploy.release; set -- test=True ;;
    release) fun=deploy.release; set -- ;;
    promote | abort) fun="deploy.$action"; set -- ;;
    *) echo "usage: ci-deploy.sh plan|release|promote|abort" >&2; exit 2 ;;
esac
: "${PROJECT:?PROJECT is not set}" "${DEPLOY_ENV:?DEPLOY_ENV is not set}"
if [ -n "${REF:-}" ] && [ "$fun" = deploy.release ]; then
    set -- "$@" "ref=$REF"
fi
if [ -n "${CI_BY:-}" ]; then
    set -- "$@" "by=$CI_BY"
fi

retries=${LOCK_RETRIES:-10}
wait=${LOCK_WAIT:-60}
attempt=1
while :; do
    code=0
    salt-run "$fun" "project=$PROJECT" "env=$DEPLOY_ENV" "$@" --out=json > deploy.json || code=$?
    python3 - "$fun" "$code" <<'EOF'
import json
import sys

fun, code = sys.argv[1], sys.argv[2]
try:
    with open("deploy.json", encoding="utf-8") as fh:
        doc = json.load(fh)
except (OSError, ValueError) as exc:
    print(f"{fun}: exit {code}; no JSON document in deploy.json ({exc})")
else:
    line = f"{fun}: exit {code}, result {doc.get('result')}, release {doc.get('release') or '-'}"
    if doc.get("error"):
        line += f": {doc['error']}"
    print(line)
EOF
    if [ "$code" -ne 3 ] || [ "$attempt" -ge "$retries" ]; then
        break
    fi
    echo "$DEPLOY_ENV is locked by another run: attempt $attempt of $retries, next in ${wait} s"
    attempt=$((attempt + 1))
    sleep "$wait"
done
exit "$code"
