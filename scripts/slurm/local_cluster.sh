#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying scripts/slurm/train.sbatch and for
# tests/slurm. Needs root (Debian/Ubuntu packages slurmctld, slurmd, slurm-client, munge).
#
#   scripts/slurm/local_cluster.sh install   # apt-get the packages (≈ 10 s)
#   scripts/slurm/local_cluster.sh start     # munged + slurmctld + slurmd, waits for an idle node
#   eval "$(scripts/slurm/local_cluster.sh env)"   # export SLURM_CONF for sbatch/squeue/...
#   scripts/slurm/local_cluster.sh status
#   scripts/slurm/local_cluster.sh stop      # the daemons this script started, by pid file
#
# State (slurm.conf, spool, logs, pid files) lives in $SLURM_LOCAL_DIR (default
# /tmp/slurm-local). The config is tuned for quick tests: a requeued job restarts ≈ 6 s after
# `scontrol requeue` (cred_expire=5 is the minimum slurm accepts; the default 120 s would
# keep a requeued job pending for two minutes).
set -euo pipefail

STATE_DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
CONF="$STATE_DIR/slurm.conf"
HOST=$(hostname -s)

die() { echo "local_cluster: $*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (the daemons run as SlurmUser=root)"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    echo "local_cluster: slurm and munge already installed"
    return
  fi
  need_root
  command -v apt-get >/dev/null || die "apt-get not found: install slurmctld slurmd slurm-client munge by hand"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 \
         && apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null 2>&1; } \
    || die "apt-get install slurmctld slurmd slurm-client munge failed (no package mirror?)"
  echo "local_cluster: installed $(slurmd -V)"
}

write_conf() {
  local cpus mem_mb
  # nproc honours OMP_NUM_THREADS; the node has the CPUs this process may run on, not fewer.
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
  # RealMemory a little under the total, or slurmd reports the node as misconfigured.
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  mkdir -p "$STATE_DIR"/{ctld,spool,log}
  cat >"$CONF" <<EOF
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
NodeName=$HOST CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  need_root
  command -v slurmctld >/dev/null || die "slurm is not installed: run '$0 install' first"
  export SLURM_CONF="$CONF"
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p "$STATE_DIR/log" /run/munge && chmod 755 /run/munge
    munged --force --pid-file="$STATE_DIR/munged.pid" --log-file="$STATE_DIR/log/munged.log" \
      || die "munged did not start"
  fi
  if ! alive "$STATE_DIR/slurmctld.pid" || ! alive "$STATE_DIR/slurmd.pid"; then
    write_conf
    alive "$STATE_DIR/slurmctld.pid" || slurmctld -c
    alive "$STATE_DIR/slurmd.pid" || slurmd
  fi
  local deadline=$((SECONDS + 30)) state=""
  while [ $SECONDS -lt $deadline ]; do
    state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null || true)
    case "$state" in idle* | mix* | alloc*) break ;; esac
    sleep 0.3
  done
  case "$state" in
    idle* | mix* | alloc*) ;;
    *) die "node $HOST is '${state:-unreachable}' after 30 s; logs in $STATE_DIR/log" ;;
  esac
  echo "local_cluster: node $HOST $state ($(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) CPUs); export SLURM_CONF=$CONF"
}

stop() {
  # All at once: each daemon takes ~2 s to exit.
  local name pid_file pids=()
  for name in slurmd slurmctld munged; do
    pid_file="$STATE_DIR/$name.pid"
    if alive "$pid_file"; then
      pids+=("$(cat "$pid_file")")
      kill "${pids[-1]}"
    fi
  done
  local pid
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  done
  rm -f "$STATE_DIR"/{slurmd,slurmctld,munged}.pid
  echo "local_cluster: stopped"
}

status() {
  local name
  for name in munged slurmctld slurmd; do
    if alive "$STATE_DIR/$name.pid"; then
      echo "$name: running (pid $(cat "$STATE_DIR/$name.pid"))"
    else
      echo "$name: not started here"
    fi
  done
  if [ -f "$CONF" ]; then SLURM_CONF="$CONF" sinfo 2>/dev/null || true; fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) die "usage: $0 {install|start|stop|status|env}" ;;
esac
