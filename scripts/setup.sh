#!/usr/bin/env bash
# Everything `make demo` / `make test` need on a bare Debian machine: Mosquitto, Java 17,
# Maven, Chromium, docker-compose + promtool (apt, when missing), uv, the locked
# virtualenv, the Kafka jars.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
export UV_PYTHON_DOWNLOADS=never
# uv installs no .pyc by default; with PYTHONDONTWRITEBYTECODE set (as on our CI VMs)
# every process then compiled its imports from source: processing took 10-13 s instead
# of 5 s to import on the slow VM. Compiling once at setup costs ~25 s.
export UV_COMPILE_BYTECODE=1

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root to run: $*" >&2; exit 1; fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The clients too: the integration tests and `bench ingest` publish with mosquitto_pub.
if { ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; } \
  || ! command -v mosquitto_pub >/dev/null || ! command -v mosquitto_sub >/dev/null; then
  echo "setup: installing mosquitto and mosquitto-clients from Debian packages"
  apt_install mosquitto mosquitto-clients
fi
# The broker is started by `fleetstream infra up`, never by the distribution's service.
if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
  as_root systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi

# The container stack cannot run here (no Docker engine); CI validates its files with real
# tools: Debian's docker-compose (`config` needs no engine) and promtool (package prometheus).
# Without recommends: docker-compose would pull in the Docker engine.
if ! command -v docker-compose >/dev/null || ! command -v promtool >/dev/null; then
  echo "setup: installing docker-compose and promtool from Debian packages"
  apt_install --no-install-recommends docker-compose prometheus
fi
# promtool is all we need: never leave the distribution's Prometheus daemon running.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

# The dashboard's browser test drives Debian's Chromium with Playwright (Playwright cannot
# download its own browser here).
if ! command -v chromium >/dev/null && [ ! -x /usr/bin/chromium ]; then
  echo "setup: installing chromium from Debian packages"
  apt_install chromium
fi

java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }
for tool in java mvn; do
  if ! command -v "$tool" >/dev/null; then
    echo "setup: installing $tool"
    # Debian 13 has no openjdk-17 package; its default JRE (21) runs Kafka as well.
    apt_install openjdk-17-jre-headless maven || apt_install default-jre-headless maven
  fi
done
if [ "$(java_major)" -lt 17 ] 2>/dev/null; then
  echo "setup: Kafka 4.1 needs Java 17 or later; 'java' here is $(java -version 2>&1 | head -1)" >&2
  exit 1
fi

UV=$(command -v uv || true)
if [ -z "$UV" ]; then
  UV=.cache/tools/bin/uv
  if [ ! -x "$UV" ]; then
    echo "setup: installing uv $UV_VERSION into .cache/tools"
    if ! python3 -m venv .cache/tools 2>/dev/null; then
      rm -rf .cache/tools
      apt_install python3-venv
      python3 -m venv .cache/tools
    fi
    .cache/tools/bin/pip install -q "uv==$UV_VERSION"
  fi
fi

# The interpreter the virtualenv is built on: FLEETSTREAM_PYTHON when set; else the
# distribution's /usr/bin/python3 when it is a supported version, because distributions
# build CPython with PGO and LTO while pyenv's default build has neither: on the
# benchmark machine pyenv's 3.11.7 ran the pipeline's offline replay at 20,000
# records/s against 24,400 for Debian's 3.11.2 (docs/benchmarks.md); else python3.
supported() {
  "$1" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 14))' 2>/dev/null
}
PYTHON=${FLEETSTREAM_PYTHON:-}
if [ -z "$PYTHON" ]; then
  if [ -x /usr/bin/python3 ] && supported /usr/bin/python3; then
    PYTHON=/usr/bin/python3
  else
    PYTHON=python3
  fi
fi
# uv rebuilds .venv when it was made with another interpreter.
"$UV" sync --frozen --quiet --python "$PYTHON"
.venv/bin/fleetstream infra jars >/dev/null
