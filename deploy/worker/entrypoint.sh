#!/bin/sh
# berth worker entrypoint: the ENTRYPOINT of every berth worker image.
#
# Contract (see docs/worker-image.md):
#   * berth creates the container with stdin open (OpenStdin + StdinOnce),
#     attaches, starts it, writes the runner's base64 JIT config followed by a
#     newline, and closes stdin. The config therefore never appears in the
#     container's env, command, labels, or anything `docker inspect` shows.
#   * This script reads exactly one line from stdin, hands it to the runner as
#     ACTIONS_RUNNER_INPUT_JITCONFIG (the runner reads and unsets that
#     variable), and execs ./run.sh from the folder this script lives in, with
#     any arguments it was given.
#   * A worker of a pool with container jobs (docs/container-jobs.md) gets a
#     second line: its hook credential (`bhk_…`). It is exported to the
#     runner process as BERTH_HOOK_TOKEN, where `berth hook` (the runner's
#     container hook) finds it; like the config, it is never in anything
#     `docker inspect` shows. Other workers get no second line.
#   * At end of input with no line, or on a line that is not base64, it exits
#     66 with a message on stderr. It never prints the config.
#
# Plain POSIX sh: the same file runs under busybox ash (the local image) and
# dash or bash (the production image).
set -eu

say() { printf 'berth-entrypoint: %s\n' "$*" >&2; }

jitconfig=''
# `read` fails at end of input; a last line without its newline still lands in
# $jitconfig, so only its emptiness matters.
IFS= read -r jitconfig || true
# Tolerate a CRLF line ending.
cr=$(printf '\r')
jitconfig=${jitconfig%"$cr"}

if [ -z "$jitconfig" ]; then
    say "no JIT runner configuration on stdin (end of input before a line)."
    say "berth writes the base64 JIT config and a newline to this container's stdin after starting it;"
    say "to run this image by hand: printf '%s\\n' \"\$JITCONFIG\" | docker run -i --rm IMAGE"
    exit 66
fi
case $jitconfig in
    *[!A-Za-z0-9+/=]*)
        say "the line on stdin is not a base64 JIT runner configuration."
        exit 66
        ;;
esac

# An optional second line: the hook credential of a container-jobs worker.
hook_credential=''
IFS= read -r hook_credential || true
hook_credential=${hook_credential%"$cr"}
case $hook_credential in
    '') ;;
    bhk_*)
        case ${hook_credential#bhk_} in
            *[!A-Za-z0-9_-]*)
                say "the second line on stdin is not a berth hook credential."
                exit 66
                ;;
        esac
        BERTH_HOOK_TOKEN=$hook_credential
        export BERTH_HOOK_TOKEN
        ;;
    *)
        say "the second line on stdin is not a berth hook credential."
        exit 66
        ;;
esac
unset hook_credential

cd "$(dirname -- "$0")"
# Exported for the runner process only: exec replaces this shell, and nothing
# else runs in this container before the runner.
ACTIONS_RUNNER_INPUT_JITCONFIG=$jitconfig
export ACTIONS_RUNNER_INPUT_JITCONFIG
unset jitconfig
exec ./run.sh "$@" </dev/null
