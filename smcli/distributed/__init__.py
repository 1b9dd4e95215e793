"""Past one machine: stages run as shards (one ordinary smcli run each) under any
scheduler or the built-in driver, then finalized into one directory other stages read."""
