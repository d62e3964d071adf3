#!/usr/bin/env bash
# Kernel settings for a SIP proxy (or load generator) on Linux: shows the
# current value and the recommended one for each knob; changes nothing unless
# --apply is given (then sysctl -w, not persisted: put the lines in
# /etc/sysctl.d/ to keep them). Ends with IRQ / CPU affinity advice.
# docs/tuning.md explains every knob.
#
# Usage: perf/tune.sh            # report only
#        perf/tune.sh --apply    # as root: apply the recommendations
set -euo pipefail

apply=0
case "${1:-}" in
  --apply) apply=1 ;;
  "") ;;
  *) echo "usage: $0 [--apply]" >&2; exit 2 ;;
esac
if [ $apply -eq 1 ] && [ "$(id -u)" -ne 0 ]; then
  echo "tune.sh: --apply needs root" >&2; exit 1
fi

# knob  recommended  why (one line; details in docs/tuning.md)
knobs=(
  "net.core.rmem_max|16777216|largest receive buffer a socket may ask for (sipvane and sipvane-bench ask 8 MiB)"
  "net.core.wmem_max|16777216|largest send buffer a socket may ask for"
  "net.core.rmem_default|4194304|receive buffer of sockets that do not ask (Kamailio, SIPp)"
  "net.core.wmem_default|4194304|send buffer of sockets that do not ask"
  "net.core.netdev_max_backlog|16384|packets queued per CPU between the NIC and the protocol stack"
  "net.core.busy_poll|50|us a poll/epoll may spin on the device queue before sleeping (0 = off)"
  "net.core.busy_read|50|us a blocking read may spin on the device queue (0 = off)"
  "net.ipv4.udp_rmem_min|16384|minimum receive buffer per UDP socket under memory pressure"
  "net.ipv4.udp_wmem_min|16384|minimum send buffer per UDP socket under memory pressure"
)

printf '%-30s %14s %14s  %s\n' knob current recommended why
for k in "${knobs[@]}"; do
  IFS='|' read -r name want why <<<"$k"
  path="/proc/sys/${name//.//}"
  if [ ! -r "$path" ]; then
    printf '%-30s %14s %14s  %s\n' "$name" "n/a" "$want" "$why"; continue
  fi
  cur="$(cat "$path")"
  printf '%-30s %14s %14s  %s\n' "$name" "$cur" "$want" "$why"
  if [ $apply -eq 1 ] && [ "$cur" != "$want" ]; then
    # Never lower a buffer limit someone raised on purpose.
    if [[ "$cur" =~ ^[0-9]+$ ]] && [ "$cur" -gt "$want" ] && [[ "$name" == *mem* || "$name" == *backlog* ]]; then
      continue
    fi
    sysctl -q -w "$name=$want" || echo "tune.sh: could not set $name (container?)" >&2
  fi
done

echo
echo "IRQ / CPU affinity:"
cpus="$(nproc)"
echo "  online CPUs: $cpus; sipvane pins worker i to CPU i (workers = \"auto\": one per CPU)."
if pgrep -x irqbalance >/dev/null 2>&1; then
  echo "  irqbalance is running: it moves NIC interrupts around; for stable latency stop it"
  echo "  and pin the queues yourself (below), or ban the worker CPUs (IRQBALANCE_BANNED_CPULIST)."
fi
for dev in /sys/class/net/*; do
  name="$(basename "$dev")"
  [ "$name" = lo ] && continue
  [ -d "$dev/device" ] || continue
  q="$(ls -d "$dev"/queues/rx-* 2>/dev/null | wc -l)"
  # virtio NICs name their IRQs after the device (virtio0-input.0), others after the NIC.
  devname="$(basename "$(readlink -f "$dev/device")")"
  irqs="$(grep -E "[[:space:]](${name}|${devname})[-:.[:space:]]|[[:space:]](${name}|${devname})$" /proc/interrupts 2>/dev/null \
    | awk -F: '{gsub(/ /,"",$1); print $1}' | tr '\n' ' ')"
  echo "  $name: $q rx queue(s); IRQs: ${irqs:-none found}"
  if [ "$q" -ge "$cpus" ]; then
    echo "    one queue per CPU: pin queue i's IRQ to CPU i (echo i > /proc/irq/N/smp_affinity_list),"
    echo "    so a datagram is received on the core whose worker reads it."
  else
    echo "    fewer queues than CPUs: enable RPS to spread receive work, e.g."
    echo "    for f in $dev/queues/rx-*/rps_cpus; do echo $(printf '%x' $(( (1 << cpus) - 1 ))) > \$f; done"
  fi
done
echo "  Keep the load generator off the proxy's cores when both run on one machine"
echo "  (taskset -c), and expect shared VMs (steal time) to blur every figure."
[ $apply -eq 1 ] && echo "applied (not persistent: copy to /etc/sysctl.d/90-sipvane.conf to keep)."
exit 0
