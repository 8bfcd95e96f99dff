#!/usr/bin/env bash
# Compare vdisk with qemu-img on the same 1 GiB image: wall time (best of $RUNS runs), peak
# RSS, and a check that both outputs hold the same guest data (qemu-img compare).
#
#   benches/compare.sh              # build, generate the image once, run every row
#   RUNS=5 BENCH_DIR=/big/disk benches/compare.sh
#   benches/compare.sh convert      # only rows whose name contains "convert"
#   benches/compare.sh "convert_raw_to_qcow2 delta_snapshots"   # exactly these rows
#
# Files go to $BENCH_DIR (default /tmp/vdisk-bench): the source image src.raw (made by
# benches/mkimage.py: ~1/3 holes, ~1/5 random data, the rest compressible text) is kept
# between runs; outputs are overwritten.
#
# Adding a row: write a function row_NAME that calls `measure` twice (once per tool) and
# `verify`, then add NAME to ROWS below. See row_convert_raw_to_qcow2 for the pattern, and
# convert_row for a plain convert between two formats.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/vdisk-bench}
RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-1024}
FILTER=${1:-}
VDISK="${CARGO_TARGET_DIR:-$ROOT/target}/release/vdisk"
QEMU_IMG=${QEMU_IMG:-qemu-img}

# Rows, in order (later rows may use outputs of earlier ones).
ROWS=(
    convert_raw_to_qcow2
    convert_qcow2_to_raw
    convert_realfs_to_qcow2
    convert_raw_to_qcow2_sequential
    convert_qcow2_to_qcow2
    convert_qcow2_to_qcow2_sequential
    convert_raw_to_qcow2_zlib
    convert_raw_to_qcow2_zlib_vs_W
    convert_raw_to_qcow2_zstd
    convert_qcow2_zlib_to_raw
    convert_qcow2_zstd_to_raw
    convert_raw_to_vmdk_sparse
    convert_raw_to_vmdk_stream
    convert_vmdk_to_raw
    convert_raw_to_vpc
    convert_vpc_to_raw
    convert_raw_to_vhdx
    convert_vhdx_to_raw
    convert_raw_to_vdi
    convert_vdi_to_raw
    convert_qcow2_to_vhdx
    convert_raw_to_luks
    convert_luks_to_raw
    snapshot_create
    snapshot_apply
    snapshot_delete
    check_snapshots
    commit_half
    rebase_safe
    bench_read_4k_d1
    bench_read_4k_d16
    bench_write_4k_subclusters
    bench_write_4k_ext_l2_on_vs_off
    bench_write_4k_ext_l2_on_vs_off_qemu
    serve_nbdcopy_read
    serve_convert_read
    serve_bench_read_4k_d1
    serve_bench_read_4k_d16
    serve_bench_write_4k_d1
    serve_bench_write_4k_d16
    delta_snapshots
    convert_raw_to_rbd
    convert_rbd_to_raw
    convert_qcow2_to_s3
    convert_qcow2_to_s3_qcow2
    convert_s3_qcow2_to_raw
)

die() { echo "compare.sh: $*" >&2; exit 1; }

command -v "$QEMU_IMG" >/dev/null || die "qemu-img not found: install qemu-utils"
command -v python3 >/dev/null || die "python3 not found"
if [[ ! -x /usr/bin/time ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        apt-get install -y -qq time >/dev/null
    else
        die "/usr/bin/time not found: install the 'time' package"
    fi
fi

echo "== building vdisk (release)"
(cd "$ROOT" && cargo build --release --quiet && cargo build --release --quiet --example sequential_convert)
SEQ_CONVERT="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/sequential_convert"
# The RBD rows use a second build with librbd linked, when it can be (Debian: librbd-dev):
# linking librados adds about 19 MiB to every command's peak RSS, which the other rows
# must not carry.
VDISK_RBD=""
# (only when an rbd row is selected).
if [[ -f /usr/include/rbd/librbd.h && ( -z $FILTER || "convert_raw_to_rbd convert_rbd_to_raw" == *"$FILTER"* ) ]]; then
    echo "== building vdisk (release, --features rbd) for the rbd rows"
    (cd "$ROOT" && CARGO_TARGET_DIR="$ROOT/target/bench-rbd" cargo build --release --quiet --features rbd)
    VDISK_RBD="$ROOT/target/bench-rbd/release/vdisk"
fi

mkdir -p "$BENCH_DIR"
SRC="$BENCH_DIR/src.raw"
STAMP="$BENCH_DIR/src.raw.params"
PARAMS="size=${SIZE_MIB}MiB $(sha256sum "$ROOT/benches/mkimage.py" | cut -c1-16)"
if [[ ! -f "$SRC" || "$(cat "$STAMP" 2>/dev/null)" != "$PARAMS" ]]; then
    echo "== generating $SRC ($SIZE_MIB MiB)"
    python3 "$ROOT/benches/mkimage.py" "$SRC" "$SIZE_MIB"
    echo "$PARAMS" >"$STAMP"
fi

echo "== $("$QEMU_IMG" --version | head -1)"
echo "== vdisk $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'), best of $RUNS runs, $(nproc) CPUs"

# time_runs PREP CMD...: $RUNS times, run the shell snippet PREP (untimed; may be empty),
# then CMD; set BEST_S to the best wall time in seconds and PEAK_MIB to the largest peak RSS.
time_runs() {
    local prep=$1
    shift
    local tfile="$BENCH_DIR/time.out"
    BEST_S=""
    PEAK_MIB=0
    for ((i = 0; i < RUNS; i++)); do
        eval "$prep"
        sync
        local start end secs kib
        start=$(date +%s.%N)
        /usr/bin/time -f %M -o "$tfile" "$@" >/dev/null
        end=$(date +%s.%N)
        secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
        kib=$(tail -1 "$tfile")
        if [[ -z $BEST_S ]] || awk -v a="$secs" -v b="$BEST_S" 'BEGIN { exit !(a < b) }'; then
            BEST_S=$secs
        fi
        local mib=$((kib / 1024))
        if ((mib > PEAK_MIB)); then PEAK_MIB=$mib; fi
    done
}

# measure OUTPUT CMD...: time CMD, removing OUTPUT before each run.
measure() {
    local output=$1
    shift
    time_runs "rm -f '$output'" "$@"
}

# verify A B: qemu-img compare must find the two images' guest data identical.
verify() {
    if "$QEMU_IMG" compare -q "$1" "$2"; then
        VERIFIED=identical
    else
        VERIFIED=DIFFERENT
        FAILED=1
    fi
}

# measure_inplace PRISTINE WORK CMD...: CMD changes WORK in place, so WORK is copied from
# PRISTINE (untimed) before each run.
measure_inplace() {
    local pristine=$1 work=$2
    shift 2
    time_runs "cp --sparse=always '$pristine' '$work'" "$@"
}

# A 1 GiB qcow2 with 4 KiB clusters, every cluster allocated (262,144 data clusters), and
# the same image with one snapshot and a quarter of the disk rewritten after it.
full4k() {
    FULL="$BENCH_DIR/full4k.qcow2"
    FULL_SNAP="$BENCH_DIR/full4k-snap.qcow2"
    if [[ ! -f $FULL ]]; then
        echo "== generating $FULL"
        "$QEMU_IMG" create -q -f qcow2 -o cluster_size=4096 "$FULL" 1G
        qemu-io -c "write -P 0x5a 0 1G" "$FULL" >/dev/null
    fi
    if [[ ! -f $FULL_SNAP ]]; then
        cp --sparse=always "$FULL" "$FULL_SNAP"
        "$QEMU_IMG" snapshot -c s1 "$FULL_SNAP"
        qemu-io -c "write -P 0x6b 0 256M" "$FULL_SNAP" >/dev/null
        "$QEMU_IMG" snapshot -c s2 "$FULL_SNAP"
    fi
}

# check_same_snapshot_contents A B: qemu-img check clean and identical guest data.
verify_inplace() {
    VERIFIED=identical
    "$QEMU_IMG" check -q "$1" || { VERIFIED="check failed"; FAILED=1; return; }
    "$QEMU_IMG" compare -q "$1" "$2" || { VERIFIED=DIFFERENT; FAILED=1; }
}

RESULTS=()
FAILED=0

# record NAME: append one table row from the last two measurements and verification.
record() {
    local name=$1
    RESULTS+=("$(printf '%-30s %9.2f %11.2f %7.2f %10d %12d  %s' \
        "$name" "$V_S" "$Q_S" "$(awk -v a="$V_S" -v b="$Q_S" 'BEGIN { print a / b }')" "$V_MIB" "$Q_MIB" "$VERIFIED")")
}

row_convert_raw_to_qcow2() {
    measure "$BENCH_DIR/vdisk.qcow2" "$VDISK" convert -f raw -O qcow2 "$SRC" "$BENCH_DIR/vdisk.qcow2"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$BENCH_DIR/qemu.qcow2" "$QEMU_IMG" convert -f raw -O qcow2 "$SRC" "$BENCH_DIR/qemu.qcow2"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$BENCH_DIR/vdisk.qcow2"
    "$QEMU_IMG" check -q "$BENCH_DIR/vdisk.qcow2" || { VERIFIED="check failed"; FAILED=1; }
    record "convert raw -> qcow2"
}

# The sequential qcow2 layout (header, all metadata, then the data in guest order, as
# convert writes into an upload stream), through examples/sequential_convert into a local
# file, against qemu-img's ordinary convert.
seq_row() {
    local in=$1 name=$2
    local v="$BENCH_DIR/vdisk-seq.qcow2" q="$BENCH_DIR/qemu-seq.qcow2"
    measure "$v" "$SEQ_CONVERT" "$in" "$v"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$q" "$QEMU_IMG" convert -O qcow2 "$in" "$q"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$v"
    "$QEMU_IMG" check -q "$v" || { VERIFIED="check failed"; FAILED=1; }
    record "$name"
}

row_convert_raw_to_qcow2_sequential() {
    seq_row "$SRC" "convert raw -> qcow2 (seq.)"
}

row_convert_qcow2_to_qcow2() {
    local in="$BENCH_DIR/qemu.qcow2"
    [[ -f $in ]] || "$QEMU_IMG" convert -f raw -O qcow2 "$SRC" "$in"
    convert_row qcow2 qcow2 "$in"
}

row_convert_qcow2_to_qcow2_sequential() {
    local in="$BENCH_DIR/qemu.qcow2"
    [[ -f $in ]] || "$QEMU_IMG" convert -f raw -O qcow2 "$SRC" "$in"
    seq_row "$in" "convert qcow2 -> qcow2 (seq.)"
}

row_convert_qcow2_to_raw() {
    # Both tools read the qcow2 qemu-img made in the previous row.
    local in="$BENCH_DIR/qemu.qcow2"
    [[ -f $in ]] || "$QEMU_IMG" convert -f raw -O qcow2 "$SRC" "$in"
    measure "$BENCH_DIR/vdisk.raw" "$VDISK" convert -f qcow2 -O raw "$in" "$BENCH_DIR/vdisk.raw"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$BENCH_DIR/qemu.raw" "$QEMU_IMG" convert -f qcow2 -O raw "$in" "$BENCH_DIR/qemu.raw"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$BENCH_DIR/vdisk.raw"
    record "convert qcow2 -> raw"
}

# A raw image of a real file system: ext4 made from /usr/share (mkfs.ext4 -d), 2 GiB with
# about 800 MiB allocated in the layout a real file system has (metadata, inode tables,
# small files, free space). Synthetic images can hide costs a real one shows.
realfs() {
    REALFS="$BENCH_DIR/realfs.raw"
    if [[ ! -f $REALFS ]]; then
        command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 not found: install e2fsprogs"
        echo "== generating $REALFS (mkfs.ext4 -d /usr/share)"
        mkfs.ext4 -q -d /usr/share -F "$REALFS" 2G
    fi
}

row_convert_realfs_to_qcow2() {
    realfs
    measure "$BENCH_DIR/vdisk-realfs.qcow2" "$VDISK" convert -f raw -O qcow2 "$REALFS" "$BENCH_DIR/vdisk-realfs.qcow2"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$BENCH_DIR/qemu-realfs.qcow2" "$QEMU_IMG" convert -f raw -O qcow2 "$REALFS" "$BENCH_DIR/qemu-realfs.qcow2"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$REALFS" "$BENCH_DIR/vdisk-realfs.qcow2"
    "$QEMU_IMG" check -q "$BENCH_DIR/vdisk-realfs.qcow2" || { VERIFIED="check failed"; FAILED=1; }
    VERIFIED="$VERIFIED, size x$(size_ratio "$BENCH_DIR/vdisk-realfs.qcow2" "$BENCH_DIR/qemu-realfs.qcow2")"
    record "convert real ext4 -> qcow2"
}

# size_ratio A B: file size of A over that of B (compressed outputs: vdisk over qemu-img).
size_ratio() {
    awk -v a="$(stat -c %s "$1")" -v b="$(stat -c %s "$2")" 'BEGIN { printf "%.3f", a / b }'
}

# compressed_row TYPE: raw -> qcow2 with -c and compression_type=TYPE; the output column
# adds vdisk's output size over qemu-img's.
compressed_row() {
    local ty=$1 v="$BENCH_DIR/vdisk-$1.qcow2" q="$BENCH_DIR/qemu-$1.qcow2"
    measure "$v" "$VDISK" convert -c -f raw -O qcow2 -o compression_type="$ty" "$SRC" "$v"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$q" "$QEMU_IMG" convert -c -f raw -O qcow2 -o compression_type="$ty" "$SRC" "$q"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$v"
    "$QEMU_IMG" check -q "$v" || { VERIFIED="check failed"; FAILED=1; }
    VERIFIED="$VERIFIED, size x$(size_ratio "$v" "$q")"
    record "convert raw -> qcow2 -c $ty"
}

row_convert_raw_to_qcow2_zlib() { compressed_row zlib; }
row_convert_raw_to_qcow2_zstd() { compressed_row zstd; }

row_convert_raw_to_qcow2_zlib_vs_W() {
    # vdisk's default against qemu-img's fastest compressed convert (8 coroutines,
    # out-of-order writes).
    local v="$BENCH_DIR/vdisk-zlib.qcow2" q="$BENCH_DIR/qemu-zlib-W.qcow2"
    measure "$v" "$VDISK" convert -c -f raw -O qcow2 "$SRC" "$v"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$q" "$QEMU_IMG" convert -c -m 8 -W -f raw -O qcow2 "$SRC" "$q"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$v"
    VERIFIED="$VERIFIED, size x$(size_ratio "$v" "$q")"
    record "  ... vs qemu-img -m 8 -W"
}

# compressed_to_raw_row TYPE: both tools read the compressed qcow2 qemu-img made above.
compressed_to_raw_row() {
    local in="$BENCH_DIR/qemu-$1.qcow2"
    [[ -f $in ]] || "$QEMU_IMG" convert -c -f raw -O qcow2 -o compression_type="$1" "$SRC" "$in"
    measure "$BENCH_DIR/vdisk.raw" "$VDISK" convert -f qcow2 -O raw "$in" "$BENCH_DIR/vdisk.raw"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$BENCH_DIR/qemu.raw" "$QEMU_IMG" convert -f qcow2 -O raw "$in" "$BENCH_DIR/qemu.raw"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$BENCH_DIR/vdisk.raw"
    record "convert qcow2 ($1) -> raw"
}

row_convert_qcow2_zlib_to_raw() { compressed_to_raw_row zlib; }
row_convert_qcow2_zstd_to_raw() { compressed_to_raw_row zstd; }
row_convert_raw_to_vmdk_sparse() {
    measure "$BENCH_DIR/vdisk.vmdk" "$VDISK" convert -f raw -O vmdk "$SRC" "$BENCH_DIR/vdisk.vmdk"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$BENCH_DIR/qemu.vmdk" "$QEMU_IMG" convert -f raw -O vmdk "$SRC" "$BENCH_DIR/qemu.vmdk"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$BENCH_DIR/vdisk.vmdk"
    record "convert raw -> vmdk sparse"
}

row_convert_raw_to_vmdk_stream() {
    local o="-o subformat=streamOptimized"
    # shellcheck disable=SC2086
    measure "$BENCH_DIR/vdisk-s.vmdk" "$VDISK" convert -f raw -O vmdk $o "$SRC" "$BENCH_DIR/vdisk-s.vmdk"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    # shellcheck disable=SC2086
    measure "$BENCH_DIR/qemu-s.vmdk" "$QEMU_IMG" convert -f raw -O vmdk $o "$SRC" "$BENCH_DIR/qemu-s.vmdk"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$BENCH_DIR/vdisk-s.vmdk"
    record "convert raw -> vmdk stream"
}

row_convert_vmdk_to_raw() {
    local in="$BENCH_DIR/qemu.vmdk"
    [[ -f $in ]] || "$QEMU_IMG" convert -f raw -O vmdk "$SRC" "$in"
    measure "$BENCH_DIR/vdisk-v.raw" "$VDISK" convert -f vmdk -O raw "$in" "$BENCH_DIR/vdisk-v.raw"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$BENCH_DIR/qemu-v.raw" "$QEMU_IMG" convert -f vmdk -O raw "$in" "$BENCH_DIR/qemu-v.raw"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$BENCH_DIR/vdisk-v.raw"
    record "convert vmdk -> raw"
}

# qemu_made FMT: the source image as qemu-img converts it to FMT (made once, kept), for
# the rows that read FMT.
qemu_made() {
    local out="$BENCH_DIR/qemu-src.$1"
    [[ -f $out ]] || "$QEMU_IMG" convert -f raw -O "$1" "$SRC" "$out"
    echo "$out"
}

# convert_row FROM TO INPUT: time `convert -f FROM -O TO INPUT` for both tools, check that
# vdisk's output holds the source's data (and passes qemu-img check where QEMU checks TO).
convert_row() {
    local from=$1 to=$2 in=$3
    local v="$BENCH_DIR/vdisk-out.$to" q="$BENCH_DIR/qemu-out.$to"
    measure "$v" "$VDISK" convert -f "$from" -O "$to" "$in" "$v"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$q" "$QEMU_IMG" convert -f "$from" -O "$to" "$in" "$q"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$v"
    case $to in
    qcow2 | vdi | vhdx) "$QEMU_IMG" check -q -f "$to" "$v" || { VERIFIED="check failed"; FAILED=1; } ;;
    esac
    record "convert $from -> $to"
}

row_convert_raw_to_vpc() { convert_row raw vpc "$SRC"; }
row_convert_vpc_to_raw() { convert_row vpc raw "$(qemu_made vpc)"; }
row_convert_raw_to_vhdx() { convert_row raw vhdx "$SRC"; }
row_convert_vhdx_to_raw() { convert_row vhdx raw "$(qemu_made vhdx)"; }
row_convert_raw_to_vdi() { convert_row raw vdi "$SRC"; }
row_convert_vdi_to_raw() { convert_row vdi raw "$(qemu_made vdi)"; }
row_convert_qcow2_to_vhdx() { convert_row qcow2 vhdx "$(qemu_made qcow2)"; }

row_snapshot_create() {
    full4k
    local v="$BENCH_DIR/v-snap.qcow2" q="$BENCH_DIR/q-snap.qcow2"
    measure_inplace "$FULL" "$v" "$VDISK" snapshot -c new "$v"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure_inplace "$FULL" "$q" "$QEMU_IMG" snapshot -c new "$q"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify_inplace "$v" "$q"
    record "snapshot -c (1G, 4K clusters)"
}

row_snapshot_apply() {
    full4k
    local v="$BENCH_DIR/v-snap.qcow2" q="$BENCH_DIR/q-snap.qcow2"
    measure_inplace "$FULL_SNAP" "$v" "$VDISK" snapshot -a s1 "$v"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure_inplace "$FULL_SNAP" "$q" "$QEMU_IMG" snapshot -a s1 "$q"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify_inplace "$v" "$q"
    record "snapshot -a (1G, 4K clusters)"
}

row_snapshot_delete() {
    full4k
    local v="$BENCH_DIR/v-snap.qcow2" q="$BENCH_DIR/q-snap.qcow2"
    measure_inplace "$FULL_SNAP" "$v" "$VDISK" snapshot -d s1 "$v"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure_inplace "$FULL_SNAP" "$q" "$QEMU_IMG" snapshot -d s1 "$q"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify_inplace "$v" "$q"
    record "snapshot -d (1G, 4K clusters)"
}

row_check_snapshots() {
    full4k
    time_runs "" "$VDISK" check "$FULL_SNAP"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    time_runs "" "$QEMU_IMG" check "$FULL_SNAP"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    VERIFIED="n/a (read-only)"
    record "check (1G, 4K, 2 snapshots)"
}

# base.qcow2 holds the source image; the overlay has every other 64 KiB cluster written.
commit_files() {
    CBASE="$BENCH_DIR/commit-base.qcow2"
    COVL="$BENCH_DIR/commit-overlay.qcow2"
    if [[ ! -f $COVL ]]; then
        echo "== generating $COVL"
        "$QEMU_IMG" convert -q -f raw -O qcow2 "$SRC" "$CBASE"
        "$QEMU_IMG" create -q -f qcow2 -b "$(basename "$CBASE")" -F qcow2 "$COVL"
        python3 - "$COVL.cmds" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(0, 1 << 30, 128 << 10):
        f.write(f"write -P 0x{(i >> 17) & 0xff:02x} {i} 64k\n")
PY
        qemu-io "$COVL" <"$COVL.cmds" >/dev/null
    fi
}

row_commit_half() {
    commit_files
    local vb="$BENCH_DIR/vc-base.qcow2" vo="$BENCH_DIR/vc-overlay.qcow2"
    local qb="$BENCH_DIR/qc-base.qcow2" qo="$BENCH_DIR/qc-overlay.qcow2"
    local prep="cp --sparse=always '$CBASE' BASE && cp --sparse=always '$COVL' OVL && '$QEMU_IMG' rebase -q -u -b NAME -F qcow2 OVL"
    local p=${prep//BASE/$vb}
    p=${p//OVL/$vo}
    time_runs "${p//NAME/$(basename "$vb")}" "$VDISK" commit -q "$vo"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    p=${prep//BASE/$qb}
    p=${p//OVL/$qo}
    time_runs "${p//NAME/$(basename "$qb")}" "$QEMU_IMG" commit -q "$qo"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify_inplace "$vb" "$qb"
    record "commit (1G, half allocated)"
}

# Two raw bases differing in a tenth of their 64 KiB clusters, and an overlay on the first.
rebase_files() {
    RB1="$BENCH_DIR/rebase-base1.raw"
    RB2="$BENCH_DIR/rebase-base2.raw"
    ROVL="$BENCH_DIR/rebase-overlay.qcow2"
    if [[ ! -f $ROVL ]]; then
        echo "== generating rebase inputs"
        cp --sparse=always "$SRC" "$RB1"
        cp --sparse=always "$SRC" "$RB2"
        python3 - "$RB2" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    for i in range(0, 1 << 30, 640 << 10):  # one cluster in ten
        f.seek(i)
        f.write(bytes([(i >> 16) & 0xff | 1]) * 65536)
PY
        "$QEMU_IMG" create -q -f qcow2 -b "$(basename "$RB1")" -F raw "$ROVL"
        qemu-io -c "write -P 0x77 0 16M" "$ROVL" >/dev/null
    fi
}

row_rebase_safe() {
    rebase_files
    local v="$BENCH_DIR/vr-overlay.qcow2" q="$BENCH_DIR/qr-overlay.qcow2"
    measure_inplace "$ROVL" "$v" "$VDISK" rebase -q -b "$(basename "$RB2")" -F raw "$v"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure_inplace "$ROVL" "$q" "$QEMU_IMG" rebase -q -b "$(basename "$RB2")" -F raw "$q"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify_inplace "$v" "$q"
    record "rebase safe (1/10 differs)"
}

# bench_row DEPTH: 100,000 reads of 4 KiB spread over the source image (each 1 MiB + 4 KiB
# past the last, wrapping at the end: qemu-img bench itself only steps sequentially), with
# DEPTH requests in flight. Both tools read the same page-cached raw file.
bench_row() {
    local flags=(bench -f raw -c 100000 -d "$1" -s 4k -S 1052672 "$SRC")
    time_runs "" "$VDISK" "${flags[@]}"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    time_runs "" "$QEMU_IMG" "${flags[@]}"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    VERIFIED="n/a (read-only)"
    record "bench 4K reads, -d $1"
}

row_bench_read_4k_d1() { bench_row 1; }
row_bench_read_4k_d16() { bench_row 16; }

# Subclusters (extended L2 entries): 15,000 writes of 4 KiB, -d 1, into an overlay with
# 64 KiB clusters over the full 1 GiB source (raw). Each write lands 68 KiB past the last,
# so each fills a fresh cluster, at a different place in it. Without subclusters every
# write copies the other 60 KiB of its cluster up from the backing file; with them, only
# the 4 KiB is written. The overlay is made new (untimed) before each run.
SUB_FLAGS=(bench -w -f qcow2 -c 15000 -d 1 -s 4k -S 69632 --pattern 7)
sub_overlay() { echo "rm -f '$1'; '$QEMU_IMG' create -q -f qcow2 -o cluster_size=65536,extended_l2=$2 -b '$SRC' -F raw '$1'"; }

# host_bytes_per_guest_byte TOOL IMG EXT: one more (untimed) run under strace, the bytes
# its write system calls wrote per guest byte the benchmark wrote.
host_bytes_per_guest_byte() {
    local trace="$BENCH_DIR/strace.out"
    eval "$(sub_overlay "$2" "$3")"
    strace -f -qq -e trace=pwrite64,pwritev,pwritev2,write -o "$trace" "$1" "${SUB_FLAGS[@]}" "$2" >/dev/null
    awk '/= [0-9]+$/ { n += $NF } END { printf "%.2f", n / (15000 * 4096) }' "$trace"
}

# sub_time TOOL IMG EXT: time the benchmark; sets BEST_S and PEAK_MIB, and HOST_PER to the
# host bytes written per guest byte (when strace is installed).
sub_time() {
    time_runs "$(sub_overlay "$2" "$3")" "$1" "${SUB_FLAGS[@]}" "$2"
    HOST_PER="?"
    if command -v strace >/dev/null; then HOST_PER=$(host_bytes_per_guest_byte "$@"); fi
}

# The guest data both overlays hold must be the same, and check clean.
verify_sub() {
    VERIFIED=identical
    "$QEMU_IMG" check -q "$1" || { VERIFIED="check failed"; FAILED=1; return; }
    "$QEMU_IMG" compare -q "$1" "$2" || { VERIFIED=DIFFERENT; FAILED=1; }
}

# sub_pair NAME TOOL1 EXT1 TOOL2 EXT2: the first column TOOL1 writing into an overlay with
# extended_l2=EXT1, the second TOOL2 with EXT2; the two overlays must hold the same data.
sub_pair() {
    local name=$1 a="$BENCH_DIR/sub-a.qcow2" b="$BENCH_DIR/sub-b.qcow2"
    sub_time "$2" "$a" "$3"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    local ah=$HOST_PER
    sub_time "$4" "$b" "$5"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify_sub "$a" "$b"
    VERIFIED="$VERIFIED; host bytes per guest byte $ah vs $HOST_PER"
    record "$name"
}

row_bench_write_4k_subclusters() { sub_pair "bench 4K writes, subclusters" "$VDISK" on "$QEMU_IMG" on; }
# The same tool with extended_l2=on (first column) and off (second): the ratio is on/off,
# and at most 0.25 is the 4x the subclusters promise.
row_bench_write_4k_ext_l2_on_vs_off() { sub_pair "4K writes ext_l2 on/off (vdisk)" "$VDISK" on "$VDISK" off; }
row_bench_write_4k_ext_l2_on_vs_off_qemu() { sub_pair "4K writes ext_l2 on/off (qemu)" "$QEMU_IMG" on "$QEMU_IMG" off; }

# serve_time PROGRAM ARGS...: start an NBD server on a Unix socket (read-only unless
# SERVE_RW=1; 4 clients; persistent) for $SERVE_IMG, time the client command CLIENT (an
# array; the word NBD_URI in it becomes the export's URI; OUT, if set, is removed before
# each run) $RUNS times, then stop the server. Sets BEST_S, and PEAK_MIB to the server's
# peak RSS (not the client's). Both servers get the same flags and the same client.
serve_time() {
    local sock="$BENCH_DIR/nbd.sock" pidf="$BENCH_DIR/nbd.pid" ro=(-r)
    [[ ${SERVE_RW:-0} == 1 ]] && ro=()
    rm -f "$sock" "$pidf"
    "$@" "${ro[@]}" -e 4 -t --socket="$sock" --pid-file="$pidf" "$SERVE_IMG" &
    local pid=$! i=0 uri="nbd+unix:///?socket=$sock"
    trap "kill -TERM $pid 2>/dev/null" EXIT
    while [[ ! -s $pidf ]] && ((i++ < 500)); do sleep 0.01; done
    time_runs "rm -f '${OUT:-}'" "${CLIENT[@]/NBD_URI/$uri}"
    if [[ $1 == "$VDISK" && ${SERVE_RW:-0} != 1 ]]; then
        verify "$SERVE_IMG" "$uri"
    fi
    PEAK_MIB=$(awk '/VmHWM/ { print int($2 / 1024) }' "/proc/$pid/status")
    kill -TERM "$pid"
    wait "$pid" || true
    trap - EXIT
}

# The 1 GiB qcow2 both servers export (made by qemu-img from the source image).
serve_image() {
    command -v nbdcopy >/dev/null || die "nbdcopy not found: install libnbd-bin"
    command -v qemu-nbd >/dev/null || die "qemu-nbd not found: install qemu-utils"
    SERVE_IMG="$BENCH_DIR/serve.qcow2"
    [[ -f $SERVE_IMG ]] || "$QEMU_IMG" convert -f raw -O qcow2 "$SRC" "$SERVE_IMG"
}

# serve_row NAME: time CLIENT against `vdisk serve`, then against `qemu-nbd`, and record.
serve_row() {
    serve_time "$VDISK" serve -f qcow2
    V_S=$BEST_S V_MIB=$PEAK_MIB
    serve_time qemu-nbd -f qcow2
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    record "$1"
}

row_serve_nbdcopy_read() {
    serve_image
    CLIENT=(nbdcopy NBD_URI null:) OUT=""
    serve_row "serve: nbdcopy qcow2 -> null:"
}

row_serve_convert_read() {
    serve_image
    OUT="$BENCH_DIR/nbd-out.raw"
    CLIENT=("$QEMU_IMG" convert -f raw -O raw NBD_URI "$OUT")
    serve_row "serve: qemu-img convert -O raw"
    OUT=""
}

# serve_bench_row DEPTH [-w]: qemu-img bench over NBD, 100,000 requests of 4 KiB spread
# over the disk as in bench_row, DEPTH in flight on one connection. Writes (-w) go to a
# scratch copy of the image per server; the two copies must end up with the same data.
serve_bench_row() {
    serve_image
    local depth=$1 w=${2:-} what=reads img=$SERVE_IMG
    CLIENT=("$QEMU_IMG" bench -f raw -c 100000 -d "$depth" -s 4k -S 1052672 $w NBD_URI) OUT=""
    if [[ -z $w ]]; then
        serve_row "serve: bench 4K reads -d $depth"
        return
    fi
    what=writes
    SERVE_RW=1
    SERVE_IMG="$BENCH_DIR/serve-v.qcow2"
    cp --sparse=always "$img" "$SERVE_IMG"
    serve_time "$VDISK" serve -f qcow2
    V_S=$BEST_S V_MIB=$PEAK_MIB
    SERVE_IMG="$BENCH_DIR/serve-q.qcow2"
    cp --sparse=always "$img" "$SERVE_IMG"
    serve_time qemu-nbd -f qcow2
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    SERVE_RW=0 SERVE_IMG=$img
    verify_inplace "$BENCH_DIR/serve-v.qcow2" "$BENCH_DIR/serve-q.qcow2"
    record "serve: bench 4K $what -d $depth"
}

row_serve_bench_read_4k_d1() { serve_bench_row 1; }
row_serve_bench_read_4k_d16() { serve_bench_row 16; }
row_serve_bench_write_4k_d1() { serve_bench_row 1 -w; }
row_serve_bench_write_4k_d16() { serve_bench_row 16 -w; }

# LUKS-encrypted qcow2 (aes-256-xts, qemu-img's default cipher); PBKDF2 is tuned to 10 ms
# so that the rows time the data encryption, not the key derivation.
LUKS_SECRET="secret,id=sec0,data=bench-passphrase"
LUKS_OPTS="encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"
luks_spec() { echo "driver=qcow2,file.filename=$1,encrypt.key-secret=sec0"; }

# verify_luks RAW IMG: the encrypted image holds RAW's guest data, and checks clean.
verify_luks() {
    VERIFIED=identical
    "$QEMU_IMG" compare -q --object "$LUKS_SECRET" --image-opts "driver=raw,file.filename=$1" \
        "$(luks_spec "$2")" || { VERIFIED=DIFFERENT; FAILED=1; }
    "$QEMU_IMG" check -q --object "$LUKS_SECRET" --image-opts "$(luks_spec "$2")" ||
        { VERIFIED="check failed"; FAILED=1; }
}

row_convert_raw_to_luks() {
    measure "$BENCH_DIR/vdisk-luks.qcow2" "$VDISK" convert --object "$LUKS_SECRET" -f raw -O qcow2 \
        -o "$LUKS_OPTS" "$SRC" "$BENCH_DIR/vdisk-luks.qcow2"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$BENCH_DIR/qemu-luks.qcow2" "$QEMU_IMG" convert --object "$LUKS_SECRET" -f raw -O qcow2 \
        -o "$LUKS_OPTS" "$SRC" "$BENCH_DIR/qemu-luks.qcow2"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify_luks "$SRC" "$BENCH_DIR/vdisk-luks.qcow2"
    record "convert raw -> luks qcow2"
}

row_convert_luks_to_raw() {
    # Both tools read the encrypted qcow2 qemu-img made in the previous row.
    local in="$BENCH_DIR/qemu-luks.qcow2"
    [[ -f $in ]] || "$QEMU_IMG" convert --object "$LUKS_SECRET" -f raw -O qcow2 -o "$LUKS_OPTS" "$SRC" "$in"
    measure "$BENCH_DIR/vdisk.raw" "$VDISK" convert --object "$LUKS_SECRET" --image-opts "$(luks_spec "$in")" \
        -O raw "$BENCH_DIR/vdisk.raw"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$BENCH_DIR/qemu.raw" "$QEMU_IMG" convert --object "$LUKS_SECRET" --image-opts "$(luks_spec "$in")" \
        -O raw "$BENCH_DIR/qemu.raw"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$BENCH_DIR/vdisk.raw"
    record "convert luks qcow2 -> raw"
}

# A 16 GiB qcow2 (64 KiB clusters) with 8 GiB allocated (the first half of every 2 GiB),
# snapshot A, then 1% of its clusters rewritten (one in every 100, allocated or not) and
# snapshot B; and the image at A (the full copy a delta applies to). Built once, with
# large qemu-io writes; they take about 17 GiB in $BENCH_DIR, and the row 8 GiB more while
# it runs (qemu-img's output, removed after the row).
delta_files() {
    DIMG="$BENCH_DIR/delta-16g.qcow2"
    DBASE="$BENCH_DIR/delta-base.qcow2"
    if [[ ! -f $DBASE ]]; then
        echo "== generating $DIMG and $DBASE (16 GiB, 8 GiB allocated)"
        rm -f "$DIMG"
        "$QEMU_IMG" create -q -f qcow2 "$DIMG" 16G
        local args=() i
        for ((i = 0; i < 8; i++)); do
            args+=(-c "write -P $((i + 1)) $((i * 2))G 1G")
        done
        qemu-io "${args[@]}" "$DIMG" >/dev/null
        "$QEMU_IMG" snapshot -c A "$DIMG"
        args=()
        for ((i = 0; i < 262144; i += 100)); do
            args+=(-c "write -P 0x6b $((i * 65536)) 64k")
        done
        qemu-io "${args[@]}" "$DIMG" >/dev/null
        "$QEMU_IMG" snapshot -c B "$DIMG"
        "$QEMU_IMG" convert -l snapshot.name=A -O qcow2 "$DIMG" "$DBASE.tmp"
        mv "$DBASE.tmp" "$DBASE"
    fi
}

row_delta_snapshots() {
    delta_files
    local v="$BENCH_DIR/v-delta.qcow2" q="$BENCH_DIR/q-delta.qcow2" base
    base=$(basename "$DBASE")
    measure "$v" "$VDISK" delta --from A --to B -b "$base" -F qcow2 "$DIMG" "$v"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$q" "$QEMU_IMG" convert -l snapshot.name=B -B "$base" -F qcow2 -O qcow2 "$DIMG" "$q"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$v" "$q"
    "$QEMU_IMG" check -q "$v" || { VERIFIED="check failed"; FAILED=1; }
    local vb qb
    vb=$(stat -c %s "$v")
    qb=$(stat -c %s "$q")
    VERIFIED="$VERIFIED; output $((vb >> 20)) MiB vs $((qb >> 20)) MiB, size ratio $(awk -v a="$vb" -v b="$qb" 'BEGIN { printf "%.4f", a / b }')"
    rm -f "$q" # 8 GiB
    record "delta A->B (16G, 1% changed)"
}

# qcow2 -> s3://: vdisk streams the conversion into a multipart upload; the "qemu-img"
# column is the usual way without vdisk: qemu-img convert to a local file, then upload it
# with a standard client (curl --aws-sigv4, one PUT). Needs a gateway
# (eval "$(.ci/ceph-dev.sh start)" exports AWS_ENDPOINT_URL, the keys and S3_BUCKET).
# The last column adds each side's local disk use (vdisk: none).
# s3_upload_row FMT: qcow2 -> s3:// with output format FMT, against qemu-img convert to a
# local file then curl -T.
s3_upload_row() {
    local fmt=$1
    s3_ready || return 0
    local in="$BENCH_DIR/qemu.qcow2" tmp="$BENCH_DIR/s3-upload.raw" key
    key="vdisk-bench/$$"
    local url="${AWS_ENDPOINT_URL%/}/$S3_BUCKET/$key"
    [[ -f $in ]] || "$QEMU_IMG" convert -f raw -O qcow2 "$SRC" "$in"
    local empty=$S3_EMPTY_SHA
    S3_DELETE="curl -fsS -X DELETE --aws-sigv4 aws:amz:${AWS_REGION:-us-east-1}:s3 --user \"\$AWS_ACCESS_KEY_ID:\$AWS_SECRET_ACCESS_KEY\" -H 'x-amz-content-sha256: $empty'"
    time_runs "$S3_DELETE '$url-v.$fmt' >/dev/null 2>&1 || true" \
        "$VDISK" convert -f qcow2 -O "$fmt" "$in" "s3://$S3_BUCKET/$key-v.$fmt"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    export BENCH_S3_UPLOAD="$QEMU_IMG convert -f qcow2 -O $fmt '$in' '$tmp' && curl -fsS -T '$tmp' --aws-sigv4 aws:amz:${AWS_REGION:-us-east-1}:s3 --user \"\$AWS_ACCESS_KEY_ID:\$AWS_SECRET_ACCESS_KEY\" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' '$url-q.$fmt' && du -k '$tmp' | cut -f1 > '$tmp.du' && rm -f '$tmp'"
    time_runs "rm -f '$tmp'" bash -c "$BENCH_S3_UPLOAD"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    s3curl -H "x-amz-content-sha256: $empty" -o "$BENCH_DIR/s3-down.$fmt" "$url-v.$fmt"
    verify "$SRC" "$BENCH_DIR/s3-down.$fmt"
    if [[ $fmt == qcow2 ]]; then
        "$QEMU_IMG" check -q "$BENCH_DIR/s3-down.$fmt" || { VERIFIED="check failed"; FAILED=1; }
    fi
    VERIFIED="$VERIFIED; local disk: vdisk 0 MiB, qemu-img+curl $(($(cat "$tmp.du") / 1024)) MiB ($fmt out)"
    for k in v q; do s3curl -X DELETE -H "x-amz-content-sha256: $empty" "$url-$k.$fmt" >/dev/null || true; done
    rm -f "$BENCH_DIR/s3-down.$fmt" "$tmp.du"
    record "convert qcow2 -> s3:// ($fmt)"
}

# s3_ready: a gateway answers (AWS_ENDPOINT_URL, S3_BUCKET); else say the row is skipped.
s3_ready() {
    if [[ -z ${AWS_ENDPOINT_URL:-} || -z ${S3_BUCKET:-} ]] \
        || ! curl -fsS -o /dev/null "$AWS_ENDPOINT_URL/" 2>/dev/null; then
        echo "   skipped: no S3 gateway (AWS_ENDPOINT_URL, S3_BUCKET; see .ci/ceph-dev.sh)"
        return 1
    fi
}

# The SHA-256 of an empty body, which a signed GET or DELETE carries.
S3_EMPTY_SHA=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

# s3curl CURL-ARGS...: curl with SigV4 signing from the AWS variables.
s3curl() {
    curl -fsS --aws-sigv4 "aws:amz:${AWS_REGION:-us-east-1}:s3" \
        --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" "$@"
}

row_convert_qcow2_to_s3() {
    s3_upload_row raw
}

# The same with qcow2 output: vdisk lays it out sequentially into the upload.
row_convert_qcow2_to_s3_qcow2() {
    s3_upload_row qcow2
}

# s3:// -> raw: a qcow2 object (qemu-img's convert of the source, uploaded untimed) read
# into a local raw file. vdisk reads the object in place (ranged GETs, read-ahead); the
# "qemu-img" column downloads it with curl, then converts the download and removes it.
row_convert_s3_qcow2_to_raw() {
    s3_ready || return 0
    local in="$BENCH_DIR/qemu.qcow2" tmp="$BENCH_DIR/s3-download.qcow2"
    local url="${AWS_ENDPOINT_URL%/}/$S3_BUCKET/vdisk-bench/$$-src.qcow2"
    [[ -f $in ]] || "$QEMU_IMG" convert -f raw -O qcow2 "$SRC" "$in"
    s3curl -T "$in" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$url"
    measure "$BENCH_DIR/vdisk.raw" "$VDISK" convert -f qcow2 -O raw \
        "s3://$S3_BUCKET/vdisk-bench/$$-src.qcow2" "$BENCH_DIR/vdisk.raw"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    export BENCH_S3_DOWNLOAD="curl -fsS --aws-sigv4 aws:amz:${AWS_REGION:-us-east-1}:s3 --user \"\$AWS_ACCESS_KEY_ID:\$AWS_SECRET_ACCESS_KEY\" -H 'x-amz-content-sha256: $S3_EMPTY_SHA' -o '$tmp' '$url' && $QEMU_IMG convert -f qcow2 -O raw '$tmp' '$BENCH_DIR/qemu.raw' && rm -f '$tmp'"
    measure "$BENCH_DIR/qemu.raw" bash -c "$BENCH_S3_DOWNLOAD"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$BENCH_DIR/vdisk.raw"
    VERIFIED="$VERIFIED; local disk besides the output: vdisk 0 MiB, curl+qemu-img $(($(stat -c %s "$in") >> 20)) MiB"
    s3curl -X DELETE -H "x-amz-content-sha256: $S3_EMPTY_SHA" "$url" >/dev/null || true
    rm -f "$BENCH_DIR/vdisk.raw" "$BENCH_DIR/qemu.raw" "$tmp"
    record "convert s3:// (qcow2) -> raw"
}

# raw -> rbd: on a running cluster (eval "$(.ci/ceph-dev.sh start)"); skipped without one.
# Each run writes a new image (the previous one removed untimed), as convert creates it.
row_convert_raw_to_rbd() {
    local pool=${CEPH_RBD_POOL:-rbd}
    if [[ -z ${CEPH_CONF:-} ]] || ! timeout 20 rbd ls "$pool" >/dev/null 2>&1; then
        echo "   skipped: no Ceph cluster (eval \"\$(.ci/ceph-dev.sh start)\" first)"
        return
    fi
    if [[ -z $VDISK_RBD ]]; then
        echo "   skipped: vdisk built without the rbd feature (install librbd-dev)"
        return
    fi
    local v=$pool/vdisk-bench-vdisk q=$pool/vdisk-bench-qemu
    time_runs "rbd rm --no-progress $v >/dev/null 2>&1 || true" \
        "$VDISK_RBD" convert -f raw -O raw "$SRC" "rbd:$v"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    time_runs "rbd rm --no-progress $q >/dev/null 2>&1 || true" \
        "$QEMU_IMG" convert -f raw -O raw "$SRC" "rbd:$q"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "rbd:$v"
    local vu qu
    vu=$(rbd du --format json "$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["used_size"])')
    qu=$(rbd du --format json "$q" | python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["used_size"])')
    [[ $vu == "$qu" ]] || VERIFIED="$VERIFIED, rbd du $vu vs $qu"
    rbd rm --no-progress "$v" >/dev/null 2>&1 || true
    rbd rm --no-progress "$q" >/dev/null 2>&1 || true
    record "convert raw -> rbd:"
}

# rbd: -> raw: both tools read one RBD image (written by qemu-img, untimed) into a file.
row_convert_rbd_to_raw() {
    local pool=${CEPH_RBD_POOL:-rbd}
    if [[ -z ${CEPH_CONF:-} ]] || ! timeout 20 rbd ls "$pool" >/dev/null 2>&1 || [[ -z $VDISK_RBD ]]; then
        echo "   skipped: no Ceph cluster or no rbd feature (see convert_raw_to_rbd)"
        return
    fi
    local img=$pool/vdisk-bench-src
    rbd rm --no-progress "$img" >/dev/null 2>&1 || true
    "$QEMU_IMG" convert -f raw -O raw "$SRC" "rbd:$img"
    measure "$BENCH_DIR/vdisk.raw" "$VDISK_RBD" convert -f raw -O raw "rbd:$img" "$BENCH_DIR/vdisk.raw"
    V_S=$BEST_S V_MIB=$PEAK_MIB
    measure "$BENCH_DIR/qemu.raw" "$QEMU_IMG" convert -f raw -O raw "rbd:$img" "$BENCH_DIR/qemu.raw"
    Q_S=$BEST_S Q_MIB=$PEAK_MIB
    verify "$SRC" "$BENCH_DIR/vdisk.raw"
    rbd rm --no-progress "$img" >/dev/null 2>&1 || true
    record "convert rbd: -> raw"
}

for row in "${ROWS[@]}"; do
    # FILTER: a substring of the rows to run, or a space-separated list of exact row names.
    if [[ -n $FILTER && $row != *"$FILTER"* && " $FILTER " != *" $row "* ]]; then continue; fi
    echo "== $row"
    "row_$row"
done

echo
printf '%-30s %9s %11s %7s %10s %12s  %s\n' operation "vdisk s" "qemu-img s" ratio "vdisk MiB" "qemu-img MiB" output
printf '%s\n' "${RESULTS[@]}"
echo "(seconds: best of $RUNS wall-clock runs; ratio: vdisk/qemu-img, below 1 means vdisk is faster; MiB: peak RSS)"
exit "$FAILED"
