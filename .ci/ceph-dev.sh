#!/usr/bin/env bash
# ceph-dev.sh - a throw-away single-node Ceph cluster (Debian bookworm's Ceph 16 "pacific")
# for the RBD and S3 tests: one mon, one OSD (bluestore on a sparse file), one radosgw on
# 127.0.0.1, no systemd, no containers. Everything lives under $CEPH_DEV_DIR
# (default /tmp/vdisk-ceph); the daemons write nothing under /etc/ceph or /var/lib/ceph.
#
#   .ci/ceph-dev.sh install   apt: ceph-mon ceph-osd radosgw ceph-common librbd-dev, and
#                             qemu-block-extra at exactly qemu-utils' version (never
#                             replacing qemu-utils); only what is missing
#   eval "$(.ci/ceph-dev.sh start)"
#                             start (or build) the cluster; stdout holds only `export` lines
#                             (CEPH_CONF, CEPH_KEYRING, CEPH_RBD_POOL, AWS_*, S3_BUCKET);
#                             progress goes to stderr. Idempotent: 0.2 s if already up
#   .ci/ceph-dev.sh env       print the exports of a running cluster
#   .ci/ceph-dev.sh stop      stop the daemons (state kept)
#   .ci/ceph-dev.sh purge     stop and delete $CEPH_DEV_DIR
#
# Knobs: CEPH_DEV_DIR, CEPH_DEV_MON_PORT (3300; msgr1 on +1), CEPH_DEV_RGW_PORT (7480),
# CEPH_DEV_OSD_SIZE (4G, sparse), CEPH_DEV_TIMEOUT (seconds per step, 120).
# A pid is signalled only while its command line names this cluster's ceph.conf.
set -euo pipefail

DIR=${CEPH_DEV_DIR:-/tmp/vdisk-ceph}
case "$DIR" in /*) ;; *) DIR=$PWD/$DIR ;; esac
DIR=${DIR%/}
CONF=$DIR/ceph.conf
KEYRING=$DIR/keyring
READY=$DIR/ready
MON_PORT=${CEPH_DEV_MON_PORT:-3300}
RGW_PORT=${CEPH_DEV_RGW_PORT:-7480}
OSD_SIZE=${CEPH_DEV_OSD_SIZE:-4G}
TIMEOUT=${CEPH_DEV_TIMEOUT:-120}
POOL=rbd
BUCKET=vdisk-test
# Test-only credentials of a cluster that listens on 127.0.0.1 and is deleted after use.
ACCESS_KEY=VDISKDEVACCESSKEY000
SECRET_KEY=vdiskdevsecretkey00000000000000000000000
DAEMONS="mon.a osd.0 client.rgw.dev"
# Ceph clients read these from the environment (CEPH_KEYRING over ceph.conf's keyring):
# values left from another cluster must not leak into this one.
export CEPH_CONF=$CONF CEPH_KEYRING=$KEYRING
unset CEPH_ARGS

log() { printf '[ceph-dev %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

print_env() {
    cat <<EOF
export CEPH_CONF=$CONF
export CEPH_KEYRING=$KEYRING
export CEPH_RBD_POOL=$POOL
export AWS_ENDPOINT_URL=http://127.0.0.1:$RGW_PORT
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export AWS_REGION=us-east-1
export S3_BUCKET=$BUCKET
EOF
}

# ---- install ---------------------------------------------------------------------------
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null; }

install() {
    export DEBIAN_FRONTEND=noninteractive
    local sudo=() missing=() p qv
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    for p in ceph-mon ceph-osd radosgw ceph-common librbd-dev librados-dev uuid-runtime curl; do
        installed "$p" || missing+=("$p")
    done
    # qemu's rbd: driver must match qemu-utils exactly (10.x from bookworm-backports): a
    # plain `install qemu-block-extra` would pick bookworm's 7.2 and downgrade qemu-utils.
    # Asking for the exact version either matches or fails.
    installed qemu-utils || die "qemu-utils is not installed (.ci/run installs it first)"
    qv=$(pkg_version qemu-utils)
    if ! installed qemu-block-extra || [ "$(pkg_version qemu-block-extra)" != "$qv" ]; then
        missing+=("qemu-block-extra=$qv")
    fi
    if [ ${#missing[@]} -eq 0 ]; then
        log "install: nothing missing"
        return
    fi
    log "install: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ "$(pkg_version qemu-utils)" = "$qv" ] || die "qemu-utils changed version; fix by hand"
}

# ---- processes -------------------------------------------------------------------------
ours() { # ours PID: that process runs with this cluster's ceph.conf
    local cmd
    cmd=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
    [[ "$cmd" == *" $CONF "* ]]
}
alive() {
    local pf=$DIR/run/$1.pid
    [ -s "$pf" ] && ours "$(cat "$pf")"
}
all_alive() {
    local d
    for d in $DAEMONS; do alive "$d" || return 1; done
}

wait_for() { # wait_for SECONDS WHAT CMD...
    local secs=$1 what=$2 start=$SECONDS out
    shift 2
    until out=$("$@" 2>&1); do
        if [ $((SECONDS - start)) -ge "$secs" ]; then
            log "timed out after ${secs}s waiting for $what:"
            printf '%s\n' "$out" | tail -n 5 >&2
            return 1
        fi
        sleep 0.5
    done
}

ceph_() { timeout 30 ceph --connect-timeout 20 "$@"; }

start_daemon() { # start_daemon NAME CMD...: Ceph daemons fork and write their pid file
    local name=$1
    shift
    alive "$name" && return 0
    rm -f "$DIR/run/$name.pid"
    log "starting $name"
    timeout "$TIMEOUT" "$@" -c "$CONF" >>"$DIR/log/$name.out" 2>&1 </dev/null \
        || { tail -n 20 "$DIR/log/$name.out" >&2; die "$name failed; see $DIR/log/"; }
    wait_for 30 "$name pid file" alive "$name" || die "$name exited; see $DIR/log/$name.log"
}

stop() {
    local name pf pid
    [ -d "$DIR/run" ] || return 0
    for name in client.rgw.dev osd.0 mon.a; do
        pf=$DIR/run/$name.pid
        [ -s "$pf" ] || continue
        pid=$(cat "$pf")
        if ours "$pid"; then
            log "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 40); do ours "$pid" || break; sleep 0.25; done
            if ours "$pid"; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; fi
        fi
        rm -f "$pf"
    done
}

purge() {
    stop
    [ -e "$DIR" ] || return 0
    head -n 1 "$CONF" 2>/dev/null | grep -q '^# vdisk ceph-dev' \
        || die "not deleting $DIR: it is not a ceph-dev state directory"
    rm -rf "$DIR"
    log "removed $DIR"
}

# ---- configuration ---------------------------------------------------------------------
write_conf() {
    cat >"$CONF" <<EOF
# vdisk ceph-dev: throw-away single-node cluster, written by .ci/ceph-dev.sh
[global]
fsid = $1
mon_host = [v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$((MON_PORT + 1))]
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
keyring = $KEYRING
run_dir = $DIR/run
crash_dir = $DIR/crash
log_file = $DIR/log/\$name.log
pid_file = $DIR/run/\$name.pid
ms_bind_ipv4 = true
ms_bind_ipv6 = false
public_addr = 127.0.0.1
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_max_pg_per_osd = 1000
mon_warn_on_pool_no_redundancy = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
osd_objectstore = bluestore

[client]
# clients (rbd, qemu-img, vdisk) log nowhere but stderr
log_file =

[mon]
mon_data = $DIR/mon/\$name
mon_cluster_log_to_file = false
mon_data_avail_warn = 2
mon_data_avail_crit = 1
# each pool creation waits for one map commit: 0.1 s instead of 1 s
paxos_propose_interval = 0.1

[osd]
osd_data = $DIR/osd/\$name
cluster_addr = 127.0.0.1
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
osd_memory_target = 896M
bluestore_cache_autotune = false
bluestore_cache_size = 64M
bluestore_rocksdb_options = compression=kNoCompression,max_write_buffer_number=2,min_write_buffer_number_to_merge=1,recycle_log_file_num=2,write_buffer_size=33554432,writable_file_max_buffer_size=0,compaction_readahead_size=2097152,max_background_compactions=1,max_total_wal_size=268435456
bluestore_block_create = true
bluestore_block_size = $OSD_SIZE
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
bdev_enable_discard = false

[client.rgw.dev]
rgw_data = $DIR/rgw
log_file = $DIR/log/\$name.log
rgw_frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw_thread_pool_size = 16
rgw_dynamic_resharding = false
rgw_enable_usage_log = false
# deleted objects' data is reclaimed within seconds, not hours: the S3 tests and benchmark
# rows write and delete GiBs on a small OSD
rgw_gc_obj_min_wait = 5
rgw_gc_processor_period = 5
EOF
}

mkfs() {
    local fsid a
    log "building a cluster in $DIR"
    mkdir -p "$DIR"/{run,log,crash,mon,osd/osd.0,rgw}
    fsid=$(uuidgen)
    write_conf "$fsid"
    a() { CEPH_CONF=/dev/null ceph-authtool "$@" >/dev/null; }
    a --create-keyring "$KEYRING" --gen-key -n mon. --cap mon 'allow *'
    a "$KEYRING" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
        --cap mgr 'allow *' --cap mds 'allow *'
    a "$KEYRING" --gen-key -n osd.0 --cap mon 'allow profile osd' --cap mgr 'allow profile osd' \
        --cap osd 'allow *'
    a "$KEYRING" --gen-key -n client.rgw.dev --cap mon 'allow rw' --cap osd 'allow rwx' \
        --cap mgr 'allow rw'
    chmod 600 "$KEYRING"
    monmaptool --create --fsid "$fsid" \
        --addv a "[v2:127.0.0.1:$MON_PORT,v1:127.0.0.1:$((MON_PORT + 1))]" \
        --enable-all-features --set-min-mon-release pacific "$DIR/monmap" >/dev/null
    ceph-mon --mkfs -i a -c "$CONF" --monmap "$DIR/monmap" --keyring "$KEYRING" \
        >>"$DIR/log/mon.a.out" 2>&1 || die "ceph-mon --mkfs failed; see $DIR/log/mon.a.out"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

osd_up() {
    timeout 10 ceph --admin-daemon "$DIR/run/ceph-osd.0.asok" status 2>/dev/null \
        | grep -q '"state": "active"'
}

s3_put_bucket() { # curl signs the request itself (SigV4)
    curl -fsS -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ACCESS_KEY:$SECRET_KEY" \
        -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
        -o /dev/null "http://127.0.0.1:$RGW_PORT/$BUCKET"
}

start() {
    local b fresh=0 t0=$SECONDS uuid
    for b in ceph ceph-mon ceph-osd radosgw radosgw-admin rbd ceph-authtool monmaptool uuidgen curl; do
        command -v "$b" >/dev/null || die "$b is missing: run $0 install"
    done
    if [ -f "$READY" ] && all_alive; then
        print_env
        return
    fi
    if [ ! -f "$READY" ]; then
        # an unfinished earlier start: begin again
        if [ -e "$DIR" ]; then purge; fi
        for b in "$MON_PORT" $((MON_PORT + 1)) "$RGW_PORT"; do
            port_in_use "$b" && die "127.0.0.1:$b is in use; set CEPH_DEV_MON_PORT / CEPH_DEV_RGW_PORT"
        done
        mkfs
        fresh=1
    fi
    start_daemon mon.a ceph-mon -i a
    wait_for "$TIMEOUT" "mon quorum" ceph_ mon stat || die "no mon quorum"
    if [ $fresh = 1 ]; then
        uuid=$(uuidgen)
        ceph_ osd new "$uuid" 0 >/dev/null
        ceph-osd -i 0 -c "$CONF" --mkfs --osd-uuid "$uuid" >>"$DIR/log/osd.0.out" 2>&1 \
            || die "ceph-osd --mkfs failed; see $DIR/log/osd.0.out"
    fi
    start_daemon osd.0 ceph-osd -i 0
    wait_for "$TIMEOUT" "osd.0 active" osd_up || die "osd.0 did not come up"
    if [ $fresh = 1 ]; then
        ceph_ osd pool create "$POOL" 8 8 replicated >/dev/null
        timeout "$TIMEOUT" rbd pool init "$POOL" || die "rbd pool init failed"
    fi
    start_daemon client.rgw.dev radosgw -n client.rgw.dev
    wait_for "$TIMEOUT" "radosgw" curl -fsS -o /dev/null "http://127.0.0.1:$RGW_PORT/" \
        || die "radosgw did not answer"
    if [ $fresh = 1 ]; then
        timeout 60 radosgw-admin user create --uid=vdisk --display-name="vdisk tests" \
            --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >/dev/null \
            || die "radosgw-admin user create failed"
        wait_for 60 "bucket $BUCKET" s3_put_bucket || die "could not create bucket $BUCKET"
        touch "$READY"
    fi
    log "cluster up in $((SECONDS - t0))s"
    print_env
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    env) all_alive || die "the cluster in $DIR is not running"; print_env ;;
    stop) stop ;;
    purge) purge ;;
    *) echo "usage: $0 install|start|env|stop|purge" >&2; exit 2 ;;
esac
