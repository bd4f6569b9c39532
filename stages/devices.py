"""Stage devices: record which OpenVINO devices this host offers (narrowed by $OVBUILD_DEVICES).

    python -m stages.devices

Validation stages depend on data/devices.json, so a host with other devices re-validates while the exported
artifacts (which do not depend on it) are pulled from the DVC remote instead of being rebuilt.
"""
from __future__ import annotations

import os

from stages.common import DATA, DEVICES_ENV, device_names, log, setup_logging, write_json

DEVICES_PATH = DATA / "devices.json"


def main(argv=None) -> None:
    setup_logging()
    names = device_names()
    write_json(DEVICES_PATH, {"devices": names, "restricted_by": DEVICES_ENV if DEVICES_ENV in os.environ else None})
    log.info("devices on this host: %s", ", ".join(f"{d} ({n})" for d, n in names.items()) or "none")


if __name__ == "__main__":
    main()
