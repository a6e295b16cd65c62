#!/usr/bin/env bash
# Records what iptables-restore --test prints for a rule it cannot read (tests/unit/test_iptables.py),
# for both backends, in a throwaway network namespace (unshare -n: the machine's own tables are never
# touched). Run as root from this directory: bash capture-restore-error.sh
set -u
printf '*nat\n:X - [0:0]\n-A X -d 10.99.0.999 -j RETURN\nCOMMIT\n' >restore-bad-address.rules
for backend in legacy nft; do
    wait=(); [ "$backend" = legacy ] && wait=(-w) # as IptablesCli runs them (nft takes no xtables lock)
    unshare -n "iptables-$backend-restore" --noflush "${wait[@]}" --test <restore-bad-address.rules \
        >/dev/null 2>"restore-bad-address-$backend.err"
    echo "rc=$?" >>"restore-bad-address-$backend.err"
done
