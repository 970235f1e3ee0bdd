"""The suites that ship with dpbench (`dpbench ls suites`); `dpbench run NAME` finds them by name."""
