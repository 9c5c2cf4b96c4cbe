"""Size of the retained Home Assistant discovery message, and entities enabled by default.

    .venv/bin/python benchmarks/discovery_size.py

For each model and writes on/off at PCU 609: entities announced, entities enabled on a
new device, and the device message in bytes as the bridge publishes it (abbreviated),
with compact JSON separators, and with Home Assistant's long option names.
"""

from __future__ import annotations

import json

from sermatec_bridge.bridge import discovery


def long_form(ctx: discovery.DiscoveryContext) -> dict[str, object]:
    """The same device message without abbreviations and shared options (before issue 9)."""
    shared = ("platform", "availability", "availability_mode")
    return {
        "dev": discovery.device_info(ctx), "o": discovery.origin(ctx),
        "availability": discovery.availability(ctx), "availability_mode": "all", "qos": 1,
        "cmps": {cid: {"p": c["platform"], **{k: v for k, v in c.items() if k not in shared}}
                 for cid, c in discovery.entities(ctx).items()},
    }


def main() -> None:
    print(f"{'model':<7} {'writes':<6} {'entities':>8} {'enabled':>7} {'published':>10} "
          f"{'compact':>8} {'long names':>10}")
    for model in ("10 kW", "5 kW"):
        for writes in (True, False):
            ctx = discovery.DiscoveryContext(serial="ST5K0SIMULATOR0001", model=model,
                                             pcu_version=609, version=603,
                                             writes_enabled=writes)
            entities = discovery.entities(ctx)
            enabled = sum(1 for c in entities.values() if c.get("enabled_by_default", True))
            _, payload = discovery.device_config(ctx)
            print(f"{model:<7} {writes!s:<6} {len(entities):>8} {enabled:>7} "
                  f"{len(json.dumps(payload)):>10} "
                  f"{len(json.dumps(payload, separators=(',', ':'))):>8} "
                  f"{len(json.dumps(long_form(ctx))):>10}")


if __name__ == "__main__":
    main()
