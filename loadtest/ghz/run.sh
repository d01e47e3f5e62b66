#!/usr/bin/env bash
# ghz against the gateway's streaming RPC, llmgw.v1.ChatService/StreamChatCompletion.
# The method is found through server reflection: no .proto file is needed.
#
#   LLMGW_API_KEY=... loadtest/ghz/run.sh
#
# stream_chat.json holds the run (1000 calls, 20 at once, model "small",
# 127.0.0.1:50051). This script puts the key into the `authorization`
# metadata of a private temporary copy, so the key is never written into the
# repository nor shown in the process list. Overrides (environment):
#   LLMGW_GRPC=host:port  GHZ_TOTAL=N  GHZ_CONCURRENCY=N  GHZ_MODEL=name  GHZ_FORMAT=summary|pretty|html|csv
#
# ghz is a Go program and no PyPI, npm or Debian package ships it: install it
# yourself (see README.md beside this file) and put it on PATH, or set GHZ=/path/to/ghz.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
ghz=${GHZ:-ghz}
: "${LLMGW_API_KEY:?set LLMGW_API_KEY (make run prints the demo key)}"
if ! command -v "$ghz" >/dev/null 2>&1; then
    echo "ghz not found (looked for '$ghz'): install it, see $here/README.md" >&2
    exit 127
fi

config=$(mktemp "${TMPDIR:-/tmp}/llmgw-ghz.XXXXXX.json")
trap 'rm -f "$config"' EXIT
chmod 600 "$config"
python3 - "$here/stream_chat.json" "$config" <<'PY'
import json, os, sys

source, target = sys.argv[1], sys.argv[2]
with open(source) as handle:
    config = json.load(handle)
config["metadata"] = {"authorization": "Bearer " + os.environ["LLMGW_API_KEY"]}
env = os.environ.get
if env("LLMGW_GRPC"):
    config["host"] = env("LLMGW_GRPC")
if env("GHZ_TOTAL"):
    config["total"] = int(env("GHZ_TOTAL"))
if env("GHZ_CONCURRENCY"):
    config["concurrency"] = int(env("GHZ_CONCURRENCY"))
if env("GHZ_MODEL"):
    config["data"]["params"]["model"] = env("GHZ_MODEL")
if env("GHZ_FORMAT"):
    config["format"] = env("GHZ_FORMAT")
with open(target, "w") as handle:
    json.dump(config, handle)
PY
"$ghz" --config "$config"
