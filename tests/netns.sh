#!/bin/sh
# Runs "$@" inside the private network namespace this script is started in (by tests/run.sh,
# through `unshare -n`). libwebrtc ignores loopback adapters, so 127.0.0.1 is also put on a veth
# adapter; the SDK then gathers 127.0.0.1 host candidates and nothing can leave the namespace.
set -eu
ip link set lo up
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 || true
ip link add lk0 type veth peer name lk1
ip link set lk0 up
ip link set lk1 up
ip addr add 127.0.0.1/32 dev lk0
export LKPY_TEST_NETNS=1
exec "$@"
