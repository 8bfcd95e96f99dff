#!/bin/sh
# Side-by-side timing of `qemu-img check` and `vdisk check` on a 1 GiB qcow2 image with
# 4 KiB clusters, fully allocated, with two internal snapshots (built with qemu-img/qemu-io).
#
# usage: benches/check_compare.sh [WORKDIR]   (needs qemu-img, qemu-io; builds vdisk --release)
set -eu
dir=${1:-$(mktemp -d)}
runs=${RUNS:-5}
img=$dir/check-bench.qcow2
cargo build --release --quiet
vdisk=${CARGO_TARGET_DIR:-target}/release/vdisk
if [ ! -f "$img" ]; then
    qemu-img create -q -f qcow2 -o cluster_size=4096 "$img" 1G
    qemu-io -c 'write -P 0x11 0 1G' "$img" >/dev/null
    qemu-img snapshot -c snap1 "$img"
    qemu-io -c 'write -P 0x22 0 256M' "$img" >/dev/null
    qemu-img snapshot -c snap2 "$img"
fi
# Best of $runs wall-clock runs, in milliseconds.
best() {
    b=999999999
    i=0
    while [ $i -lt $runs ]; do
        s=$(date +%s%N)
        "$@" >/dev/null 2>&1 || true
        e=$(date +%s%N)
        t=$(( (e - s) / 1000000 ))
        [ $t -lt $b ] && b=$t
        i=$((i + 1))
    done
    echo $b
}
cat "$img" >/dev/null # warm the page cache
q=$(best qemu-img check "$img")
v=$(best "$vdisk" check "$img")
printf '%-8s %12s %12s %8s\n' op qemu-img-ms vdisk-ms ratio
printf '%-8s %12d %12d %8s\n' check "$q" "$v" "$(echo "scale=2; $v / $q" | bc)"
