#!/bin/sh
# Builds the C fan-out (sfu/_fastsend.c) with AddressSanitizer and UndefinedBehaviorSanitizer
# into a scratch copy of sfu/, and runs the fan-out's unit tests against that build: a memory or
# undefined-behaviour error in the C twin fails the run. Usage: sh tests/sanitized_fanout.sh
set -eu
cd "$(dirname "$0")/.."
python=.venv/bin/python
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -r sfu protocol config routing "$scratch"/
rm -f "$scratch"/sfu/_fastsend*.so
suffix=$($python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
include=$($python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
cc -shared -fPIC -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
    -fno-sanitize-recover=undefined -I"$include" sfu/_fastsend.c -o "$scratch/sfu/_fastsend$suffix"
# Python itself is not instrumented: the ASan runtime is preloaded, its leak report (Python
# frees little at exit) is off, and any report aborts the run.
export LD_PRELOAD="$(cc -print-file-name=libasan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# The editable install's import hook would find the in-tree packages first: it is taken out.
$python - "$scratch" "$@" <<'PY'
import sys

scratch, *arguments = sys.argv[1:]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, scratch)
import pytest  # noqa: E402
import sfu._fastsend  # noqa: E402

if not sfu._fastsend.__file__.startswith(scratch):
    sys.exit(f"the sanitized build was not the one imported: {sfu._fastsend.__file__}")
tests = [
    "tests/unit/test_fanout.py",
    "tests/unit/test_downtrack_sessions.py",
    "tests/unit/test_media.py",
    "tests/unit/test_single_pc.py",
]
# Capture at the sys level only: a sanitizer report is written to file descriptor 2.
sys.exit(pytest.main(["-p", "no:cacheprovider", "-q", "--capture=sys", *tests, *arguments]))
PY
