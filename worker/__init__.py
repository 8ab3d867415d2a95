"""The Faust worker of racer-online: topics, agents and timers. Wiring only."""
