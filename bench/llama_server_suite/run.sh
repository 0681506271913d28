#!/usr/bin/env bash
# llama.cpp's own server test suite, run against llama-server (peer) and/or llamazip (ours)
# on one local model: the figure of issue 14 (how many of the tests that pass on
# llama-server pass on `--server`). Started from ../shared/llama-server-suite; the
# wrapper's translation table here follows runtime/cli.py's server flags.
#   LLAMA_SERVER_TESTS=.../tools/server/tests SRVSUITE_MODEL=model.gguf \
#   bash bench/llama_server_suite/run.sh [peer|ours|both] [test_file ...]   (from the checkout)
# Results: $SRVSUITE_OUT/<mode>/<file>.xml and .log (default ./srvsuite-results); then
#   python3 compare.py   (same SRVSUITE_OUT) prints the table and the peer-pass/ours-fail list.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
: "${LLAMA_SERVER_TESTS:?set LLAMA_SERVER_TESTS to the tools/server/tests folder of llama.cpp}"
: "${SRVSUITE_MODEL:?set SRVSUITE_MODEL to a local GGUF (e.g. SmolLM2-135M-Instruct Q4_1)}"
MODES="${1:-both}"; shift || true
[ "$MODES" = both ] && MODES="peer ours"
FILES=("$@")
if [ ${#FILES[@]} -eq 0 ]; then
  FILES=(test_basic test_completion test_chat_completion test_stream test_tokenize
         test_security test_ctx_shift test_slot_save test_metrics test_embedding
         test_ignore_eos test_template test_tool_call test_infill test_compat_anthropic
         test_compat_oai_responses)
fi
OUT=$(mkdir -p "${SRVSUITE_OUT:-srvsuite-results}" && cd "${SRVSUITE_OUT:-srvsuite-results}" && pwd)
export LLAMA_SERVER_BIN_PATH=$HERE/llama-server-wrapper
export SRVSUITE_OURS_ROOT=${SRVSUITE_OURS_ROOT:-$(pwd)}
export SRVSUITE_OURS_PYTHON=${SRVSUITE_OURS_PYTHON:-$(command -v python3)}
export LLAMA_CACHE=$OUT/llama_cache             # never used for downloads (no internet)
export PORT=${PORT:-18480}
export PYTHONPATH=$HERE/plugin
export SRVSUITE_THREADS=${SRVSUITE_THREADS:-1}
mkdir -p "$LLAMA_CACHE"
for mode in $MODES; do
  export SRVSUITE_MODE=$mode
  mkdir -p "$OUT/$mode"
  export SRVSUITE_DROP_LOG=$OUT/dropped_flags_$mode.tsv SRVSUITE_ARGV_LOG=$OUT/argv_$mode.log
  for f in "${FILES[@]}"; do
    f=${f%.py}; f=${f#unit/}
    echo "== $mode $f $(date +%T)"
    ( cd "$LLAMA_SERVER_TESTS" && timeout 3600 "$SRVSUITE_OURS_PYTHON" -m pytest -p srvsuite_plugin \
        -p no:cacheprovider -m "not slow" --timeout "${TEST_TIMEOUT:-300}" -rA -q \
        --junitxml="$OUT/$mode/$f.xml" "unit/$f.py" ) > "$OUT/$mode/$f.log" 2>&1
    tail -1 "$OUT/$mode/$f.log"
  done
done
