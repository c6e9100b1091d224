"""The fleet test bed (simulated hosts in namespaces) and the checks of ../shared/FLEET.md §6."""
