#!/usr/bin/env bash
# Installs what the build, the tests and the demo need on a fresh Debian machine (as root).
# Sourced by scripts/test and scripts/demo; installs only what is missing.
set -euo pipefail

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip || need_apt+=(iproute2)
have iptables || need_apt+=(iptables)
have nft || need_apt+=(nftables)
have dnsmasq || need_apt+=(dnsmasq-base)
have curl || need_apt+=(curl)
have getent || need_apt+=(libc-bin)
have sha256sum || need_apt+=(coreutils)
[ -x /usr/bin/python3 ] || need_apt+=(python3)
have node || need_apt+=(nodejs)
have cc || need_apt+=(gcc)
# tests/tests/syscalls.rs: Go (stdlib only), static glibc for `gcc -static`, Ruby, bind9's host.
have go || need_apt+=(golang-go)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/aarch64-linux-gnu/libc.a ] || need_apt+=(libc6-dev)
have ruby || need_apt+=(ruby)
have host || need_apt+=(bind9-host)
have file || need_apt+=(file)
have pkill || need_apt+=(procps)
have sysctl || need_apt+=(procps)
have openssl || need_apt+=(openssl)
have iptables-legacy || need_apt+=(iptables)
/usr/bin/python3 -c 'import jsonschema' 2>/dev/null || need_apt+=(python3-jsonschema)
/usr/bin/python3 -c 'import requests' 2>/dev/null || need_apt+=(python3-requests)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! have cargo; then
  echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
