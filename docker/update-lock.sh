#!/usr/bin/env bash
# Regenerate docker/requirements.txt: resolve pyproject.toml's runtime dependencies against
# PyPI (only PyPI: the local pip config, indexes and find-links of a dev machine are ignored so
# the lock matches what the image build can download) with the direct dependencies pinned to
# the versions installed in the current Python (the ones the test suite was run with).
#
# Usage: docker/update-lock.sh [PYTHON]      (PYTHON: a CPython 3.11, default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Direct dependency names from pyproject.toml, pinned to the installed versions.
"$py" - "$work/direct.txt" <<'PY'
import re, sys, tomllib
from importlib.metadata import PackageNotFoundError, version
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
# the image ships the BIDS validator too (the 'validator' extra)
deps = project["dependencies"] + project["optional-dependencies"]["validator"]
out = []
for spec in deps:
    name = re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]
    try:
        out.append(f"{name}=={version(name)}")
    except PackageNotFoundError:      # not installed here: keep pyproject's range
        out.append(spec)
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY

# --isolated ignores pip.conf and PIP_* variables; pass the CA bundle explicitly so a
# TLS-intercepting proxy (local CA) still works.
cert="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
PIP_CONFIG_FILE=/dev/null "$py" -m pip install --isolated --cert "$cert" --quiet \
    --dry-run --ignore-installed --prefer-binary --report "$work/report.json" -r "$work/direct.txt"

"$py" - "$work/report.json" docker/requirements.txt <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
pins = sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in report["install"])
with open(sys.argv[2]) as fh:                       # keep the explanatory header
    header = [line for line in fh if line.startswith("#")]
open(sys.argv[2], "w").write("".join(header) + "\n".join(pins) + "\n")
print(f"{len(pins)} pins written to {sys.argv[2]}")
PY
