"""The Faust worker of racer-online: topics, batch consumers, timers and web views. Wiring only."""
