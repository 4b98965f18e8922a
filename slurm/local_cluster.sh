#!/usr/bin/env bash
# A real Slurm on this machine, for trying the sbatch templates and for CI (run as root):
#   bash slurm/local_cluster.sh install   apt-get the Debian packages (slurmctld slurmd slurm-client munge)
#   bash slurm/local_cluster.sh up        write a minimal slurm.conf, start munge + slurmctld + the slurmds, wait
#                                         until the nodes are idle
#   bash slurm/local_cluster.sh down      stop the daemons
# Partition "local" (the default) is one node with this machine's CPUs and no GPUs. Partition "pair" is two more
# node entries, <host>-a and <host>-b, each a slurmd of its own on this same machine (Debian's slurmd is built
# with multiple-slurmd support: `slurmd -N NAME`), so a 2-node allocation and its srun steps are real. Without
# systemd (containers, CI) the daemons are started directly.
set -euo pipefail

CONFIG_DIR="${SLURM_CONFIG_DIR:-/etc/slurm}"
NODE="$(hostname -s)"
PAIR=("$NODE-a" "$NODE-b")

install_packages() {
  export DEBIAN_FRONTEND=noninteractive
  local packages=(slurmctld slurmd slurm-client munge)
  apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null; }
  echo "slurm: installed $(slurmctld -V)"
}

write_config() {
  mkdir -p "$CONFIG_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
  # The minimal configuration from shared/DESIGN.md: munge auth, no cgroups, no accounting, one node.
  cat > "$CONFIG_DIR/slurm.conf" <<EOF
ClusterName=dfdtrain-local
SlurmctldHost=${NODE}(127.0.0.1)
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ReturnToService=2
NodeName=${NODE} NodeAddr=127.0.0.1 Port=6818 CPUs=$(nproc) State=UNKNOWN
NodeName=${PAIR[0]} NodeHostname=${NODE} NodeAddr=127.0.0.1 Port=6828 CPUs=$(nproc) State=UNKNOWN
NodeName=${PAIR[1]} NodeHostname=${NODE} NodeAddr=127.0.0.1 Port=6829 CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
PartitionName=pair Nodes=${PAIR[0]},${PAIR[1]} MaxTime=INFINITE State=UP
EOF
  for node in "$NODE" "${PAIR[@]}"; do mkdir -p "/var/spool/slurmd/$node"; done
}

wait_until_idle() {
  local nodes; nodes="$(IFS=,; echo "$NODE,${PAIR[*]}")"
  for _ in $(seq 60); do
    if [ "$(sinfo --noheader --Node --nodes="$nodes" --format=%t 2>/dev/null | grep -cx "idle")" -eq 3 ]; then
      echo "slurm: node $NODE idle in partition local, ${PAIR[*]} in partition pair ($(nproc) CPUs each)"
      return 0
    fi
    sleep 1
  done
  echo "slurm: nodes $nodes did not all become idle within 60 s; see /var/log/slurm/" >&2
  sinfo >&2 || true
  tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd-*.log >&2 || true
  return 1
}

up() {
  command -v slurmctld >/dev/null || { echo "slurm: slurmctld not installed (run: $0 install)" >&2; exit 1; }
  write_config
  chown munge:munge /run/munge
  pgrep -x munged >/dev/null || runuser -u munge -- munged
  pgrep -x slurmctld >/dev/null || slurmctld
  for node in "$NODE" "${PAIR[@]}"; do pgrep -f "^slurmd -N $node\$" >/dev/null || slurmd -N "$node"; done
  wait_until_idle
}

down() {
  pkill -x slurmd || true
  pkill -x slurmctld || true
  pkill -x munged || true
}

case "${1:-}" in
  install) install_packages ;;
  up) up ;;
  down) down ;;
  *) echo "usage: $0 install|up|down" >&2; exit 2 ;;
esac
