"""``python -m outbound [PLANT.yaml]``: run the outbound targets of a plant file (default: the
plant of ``PLANTPULSE_PLANT``) on the lake of ``PLANTPULSE_LAKE`` until SIGINT/SIGTERM.

MQTT credentials: ``PLANTPULSE_OUTBOUND_MQTT_USERNAME`` and ``PLANTPULSE_OUTBOUND_MQTT_PASSWORD``
(``plantpulse up --mqtt`` sets them to the broker's ``outbound`` user).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m outbound", description=__doc__.splitlines()[0])
    ap.add_argument("plant", nargs="?", default=None, help="plant file with an outbound: section")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from lake import Lake, Settings
    from outbound.service import Outbound
    from plant import PlantError, default_plant, load_plant

    try:
        plant = load_plant(args.plant) if args.plant else default_plant()
    except PlantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if plant.outbound is None:
        print(f"error: plant file {plant.path} has no outbound: section", file=sys.stderr)
        return 2
    user = os.environ.get("PLANTPULSE_OUTBOUND_MQTT_USERNAME")
    auth = (user, os.environ.get("PLANTPULSE_OUTBOUND_MQTT_PASSWORD", "")) if user else None
    service = Outbound(plant, Lake(Settings.from_env().lake_uri), mqtt_auth=auth)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    service.start()
    logging.getLogger("outbound").info("outbound running for plant %s", plant.name)
    stop.wait()
    service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
