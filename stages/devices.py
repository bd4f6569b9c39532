"""Stage devices: record which OpenVINO devices this host offers (narrowed by $OVBUILD_DEVICES) and which absent
targets it can emulate.

    python -m stages.devices

Validation stages depend on data/devices.json, so a host with other devices re-validates while the exported
artifacts (which do not depend on it) are pulled from the DVC remote instead of being rebuilt. Only device kinds are
recorded here (hardware names go with the performance measurements), so the file is the same on hosts of a kind.
"""

from __future__ import annotations

import os

from stages.core.devices import host_devices
from stages.core.errors import run_stage
from stages.core.io import write_json
from stages.core.paths import DATA
from stages.core.runtime import DEVICES_ENV, log, setup_logging

DEVICES_PATH = DATA / "devices.json"


def main(argv=None) -> None:
    setup_logging()
    found = host_devices()
    write_json(DEVICES_PATH, {**found, "restricted_by": DEVICES_ENV if DEVICES_ENV in os.environ else None})
    log.info(
        "devices on this host: %s; emulated: %s",
        ", ".join(found["devices"]) or "none",
        ", ".join(found["emulated"].values()) or "none",
    )


if __name__ == "__main__":
    run_stage(main)
