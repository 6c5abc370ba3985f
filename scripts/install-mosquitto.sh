#!/bin/sh
# Install the Mosquitto MQTT broker (Debian/Ubuntu package) if it is not on this machine yet.
# Used by `plantpulse up --mqtt` and by the tests that need a real broker.
set -eu
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: mosquitto is not installed and apt-get is not available; install the 'mosquitto' broker with your package manager" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "error: installing mosquitto needs root: run 'apt-get install -y mosquitto' as root" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null 2>&1 || true
$SUDO apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
echo "installed mosquitto: $(ls /usr/sbin/mosquitto)"
