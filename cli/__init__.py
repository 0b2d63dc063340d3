"""The `p2pfed` command line (installed as `p2pfed.cli`)."""
