#!/usr/bin/env bash
# tests/memcheck.sh CMD...: runs one end-to-end test (CMD) with every server
# it starts under valgrind memcheck (IMBOX_TEST_WRAPPER, read by
# tests/e2e/e2e_fixture.c and tests/py/imbox_harness.py), then reads every
# server's valgrind log. Fails when the test fails, or when any log reports
# an error (invalid access, uninitialised value, bad free, a definite leak)
# that tests/valgrind.supp does not suppress: a server killed by SIGKILL
# writes no leak report, but its access errors are in its log already.
# The ctest entries of label `memcheck` (cmake -DIMBOX_MEMCHECK=ON) call it;
# scripts/memcheck runs them all.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
logs="$(mktemp -d "${TMPDIR:-/tmp}/imbox-memcheck-XXXXXX")"
export IMBOX_TEST_WRAPPER="valgrind --tool=memcheck --error-exitcode=99 --leak-check=full
 --errors-for-leak-kinds=definite --show-leak-kinds=definite --num-callers=40
 --suppressions=$here/valgrind.supp --gen-suppressions=all --log-file=$logs/vg-%p.log"
IMBOX_TEST_WRAPPER="$(echo $IMBOX_TEST_WRAPPER)" # one line, single spaces

"$@"
rc=$?

nlogs=0
bad=0
for f in "$logs"/vg-*.log; do
    [ -e "$f" ] || continue
    nlogs=$((nlogs + 1))
    # An error's first line, e.g. "==123== Invalid read of size 8", or a
    # leak record "... are definitely lost in loss record ...".
    if grep -Eq '^==[0-9]+== (Invalid |Conditional jump|Use of uninitialised|Syscall param|Mismatched free|Source and destination overlap|Argument .* of function|.* are definitely lost in loss record)' "$f"; then
        bad=$((bad + 1))
        echo "memcheck: errors in $f (command: $(grep -m1 'Command:' "$f" | sed 's/.*Command: //')):"
        sed -n '1,200p' "$f"
    fi
done
summary="$(cat "$logs"/vg-*.log 2>/dev/null | grep -c 'ERROR SUMMARY: 0 errors')"
echo "memcheck: $nlogs server processes under valgrind, $summary exited with 0 errors, $bad with errors"
if [ "$bad" -eq 0 ] && [ "$rc" -eq 0 ]; then
    rm -rf "$logs"
else
    echo "memcheck: logs kept in $logs"
fi
[ "$nlogs" -gt 0 ] || { echo "memcheck: no server ran under valgrind"; exit 1; }
[ "$bad" -eq 0 ] || exit 1
exit "$rc"
